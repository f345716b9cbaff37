"""Hard negatives that are really absent: word overlap, the base model's verification, its cache.

The tiny SAM3 knows circle, rectangle and triangle. On a dataset that annotates circles only
while rectangles and triangles are drawn unannotated, with those names in the negative
vocabulary, verification must drop them as negatives on the images where they appear and keep
them on the others (at the tiny model's operating point, score 0.3: docs/tiny-sam3.md).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from sam3_lora.cli import main
from sam3_lora.config import load_config
from sam3_lora.data.coco import CocoDataset
from sam3_lora.data.config_check import validate_config
from sam3_lora.data.subset import images_with, keep_categories
from sam3_lora.data.synthetic import generate_shapes_dataset
from sam3_lora.data.transforms import build_transforms
from sam3_lora.data.vocabulary import concept_words, exclude_overlapping, singular
from sam3_lora.errors import DatasetError
from sam3_lora.models import load_sam3
from sam3_lora.tasks.concept.module import ConceptModel
from sam3_lora.tasks.concept.negatives import candidate_pools, score_prompts, verify_negatives
from sam3_lora.tasks.concept.samples import (
    NEGATIVE_PROMPT_ID,
    RETENTION_PROMPT_ID,
    ConceptBatch,
    ConceptDataset,
)
from sam3_lora.tasks.concept.spec import PIXEL_MEAN, PIXEL_STD
from sam3_lora.training import build_recipe

TINY_THRESHOLD = 0.3  # the tiny SAM3's operating point
VOCABULARY = "rectangle\ntriangle\nperson\n"


def test_singular_and_shared_words() -> None:
    assert [singular(w) for w in ("cars", "boxes", "berries", "people", "knives")] == [
        "car",
        "box",
        "berry",
        "person",
        "knife",
    ]
    assert [singular(w) for w in ("glass", "bus", "grass", "axis", "car")] == [
        "glass",
        "bus",
        "grass",
        "axis",
        "car",
    ]
    assert concept_words("A Bottle of Wine") == {"bottle", "wine"}
    kept, excluded = exclude_overlapping(
        ["wheel", "car", "cars", "road", "traffic light", "wine glasses"],
        ["steering wheel", "Car", "glass"],
    )
    assert kept == ["road", "traffic light"]
    assert excluded == {
        "wheel": "steering wheel",
        "car": "Car",
        "cars": "Car",
        "wine glasses": "glass",
    }


def test_dataset_never_draws_a_concept_sharing_a_word(shapes_dir: Path) -> None:
    coco = CocoDataset.from_split_dir(shapes_dir / "train")
    transform = build_transforms(224, train=True, pixel_mean=PIXEL_MEAN, pixel_std=PIXEL_STD)
    vocabulary = ["circles", "red rectangle", "the triangle", "steering wheel", "person"]
    dataset = ConceptDataset(coco, transform, True, negative_vocabulary=vocabulary)
    assert dataset.negative_vocabulary == ["steering wheel", "person"]
    assert set(dataset.excluded_negatives) == {"circles", "red rectangle", "the triangle"}
    for epoch in range(3):
        dataset.set_epoch(epoch)
        negatives = {p for i in range(len(dataset)) for p in dataset[i].prompts[3:]}
        assert negatives <= {"steering wheel", "person"}
    with pytest.raises(DatasetError, match="data.negative_prompts"):
        ConceptDataset(coco, transform, True, negative_vocabulary=["big circle", "rectangles"])


def test_candidate_pools_are_seeded_per_image() -> None:
    vocabulary = [f"concept {k}" for k in range(40)]
    pools = candidate_pools(vocabulary, 8, seed=0, image_ids=[0, 1, 2])
    assert pools == candidate_pools(vocabulary, 8, seed=0, image_ids=[0, 1, 2])
    assert all(len(p) == 8 and len(set(p)) == 8 for p in pools.values())
    assert pools[0] != pools[1]
    assert pools[0] == sorted(pools[0], key=vocabulary.index)  # vocabulary order
    assert candidate_pools(vocabulary, 8, seed=1, image_ids=[0])[0] != pools[0]
    assert candidate_pools(vocabulary[:5], 8, 0, [3]) == {3: vocabulary[:5]}


def test_scoring_head_pass_equals_the_full_forward() -> None:
    loaded = load_sam3("tiny-random")
    model = ConceptModel(loaded.model, loaded.processor.tokenizer)
    pixel_values = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    batch = ConceptBatch(
        pixel_values=pixel_values,
        prompt_image_index=torch.tensor([0, 0, 1, 1, 1]),
        prompts=["circle", "star", "circle", "person", "a red box"],
        prompt_category_ids=[0] * 5,
        target_boxes=[],
        target_masks=[],
        image_indices=[0, 1],
    )
    with torch.inference_mode():
        outputs = model(batch)
    expected = (outputs.logits[-1].sigmoid() * outputs.presence_logits[-1].sigmoid()).amax(1)
    torch.testing.assert_close(score_prompts(model, batch), expected)
    with torch.inference_mode():  # nothing of the model is left changed (hooks removed)
        again = model(batch)
    torch.testing.assert_close(again.masks, outputs.masks)


def test_cache_is_reused_keyed_and_rebuilt_when_corrupt(
    shapes_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    coco = CocoDataset.from_split_dir(shapes_dir / "valid")
    loaded = load_sam3("tiny-random")
    model = ConceptModel(loaded.model, loaded.processor.tokenizer)  # a module in training mode
    options = {"resolution": 224, "pool_size": 2, "seed": 0, "threshold": 0.5}
    vocabulary = ["person", "car", "road"]
    first = verify_negatives(coco, model, vocabulary, **options)
    assert not loaded.model.training  # the network keeps its own (eval) mode
    assert not first.from_cache and first.cache_file.is_file()
    assert first.cache_file.parent == shapes_dir / "valid" / ".sam3-lora"
    data = json.loads(first.cache_file.read_text())  # plain JSON, no pickle
    assert set(data["scores"]) == {str(i.id) for i in coco.images}
    assert all(len(v) == 2 for v in data["scores"].values())

    again = verify_negatives(coco, model, vocabulary, **options)
    assert again.from_cache and again.scores == first.scores and again.seconds == 0
    other = verify_negatives(coco, model, ["person", "car", "sky"], **options)
    assert other.cache_file != first.cache_file  # the vocabulary is part of the key
    lower = verify_negatives(coco, model, vocabulary, **{**options, "threshold": 0.01})
    assert lower.from_cache  # the threshold is applied to the cached scores
    assert sum(map(len, (lower.present(i) for i in lower.scores))) >= sum(
        map(len, (first.present(i) for i in first.scores))
    )

    first.cache_file.write_text('{"version": 1, "key": ')
    with caplog.at_level(logging.WARNING):
        rebuilt = verify_negatives(coco, model, vocabulary, **options)
    assert "unreadable" in caplog.text and "recomputed" in caplog.text
    assert not rebuilt.from_cache and rebuilt.scores == first.scores
    assert json.loads(first.cache_file.read_text())["scores"]  # rewritten

    part = verify_negatives(coco, model, ["bed"], **options, indices=[0, 2])
    assert list(part.scores) == [coco.images[0].id, coco.images[2].id]
    rest = verify_negatives(coco, model, ["bed"], **options)  # scores the two others only
    assert not rest.from_cache and len(rest.scores) == len(coco)


@pytest.fixture(scope="module")
def circles_only(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Circles annotated; rectangles and triangles drawn but not annotated (the full
    annotations, which say where they are, in ``full``)."""
    root = tmp_path_factory.mktemp("circles")
    full = generate_shapes_dataset(
        root / "full", num_train=24, num_val=6, seed=0, image_size=256, progress=False
    )
    for split in ("train", "valid"):
        keep_categories(full / split, ["circle"], root / "circles" / split)
    (root / "vocabulary.txt").write_text(VOCABULARY)
    return full, root / "circles", root / "vocabulary.txt"


def _circle_config(circles_only: tuple[Path, Path, Path], tmp_path: Path):
    _, circles, vocabulary = circles_only
    return load_config(
        None,
        {
            "model.name_or_path": "tiny",
            "data.train": str(circles / "train"),
            "data.valid": str(circles / "valid"),
            "data.negative_prompts": str(vocabulary),
            "data.negative_verify_threshold": TINY_THRESHOLD,
            "data.augment": False,
            "evaluation.score_threshold": TINY_THRESHOLD,
            "training.num_workers": 0,
            "output.output_dir": str(tmp_path / "run"),
        },
    )


def test_tiny_model_drops_drawn_shapes_where_they_appear(
    circles_only: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    full, _, _ = circles_only
    config = _circle_config(circles_only, tmp_path)
    recipe = build_recipe(config)
    train, valid = recipe.train_dataset, recipe.valid_dataset
    assert "rectangle present in" in recipe.description

    rectangles = images_with(full / "train", "rectangle")
    triangles = images_with(full / "train", "triangle")
    assert 0 < len(rectangles) < len(train) and 0 < len(triangles) < len(train)
    agree = 0
    for index, image in enumerate(train.coco.images):
        candidates = train.negative_candidates[index]
        assert "person" in candidates  # never found: always a negative
        # the tiny model finds every rectangle and nothing else
        assert ("rectangle" in candidates) == (image.id not in rectangles), image.id
        agree += ("triangle" in candidates) == (image.id not in triangles)
    assert agree >= 0.75 * len(train)  # it misses a few triangles

    for epoch in range(4):  # the negatives drawn: only among the image's verified ones
        train.set_epoch(epoch)
        for index, image in enumerate(train.coco.images):
            sample = train[index]
            drawn = [
                p for p, c in zip(sample.prompts, sample.prompt_category_ids, strict=True)
                if c == NEGATIVE_PROMPT_ID
            ]  # fmt: skip
            assert set(drawn) <= set(train.negative_candidates[index])
            if image.id in rectangles:
                assert "rectangle" not in drawn

    # validation: the concepts the base finds are retention prompts, never negatives
    valid_rectangles = images_with(full / "valid", "rectangle")
    for index, image in enumerate(valid.coco.images):
        sample = valid[index]
        retained = [
            p for p, c in zip(sample.prompts, sample.prompt_category_ids, strict=True)
            if c == RETENTION_PROMPT_ID
        ]  # fmt: skip
        if image.id in valid_rectangles:  # (on image 0 it also takes a triangle for one)
            assert "rectangle" in retained
        assert not set(retained) & set(sample.prompts[: -len(retained) or None])

    # data validate --config reads the cache: how often each concept was found present
    report = validate_config(config, decode_images=False)[0]
    assert report.negatives.cache_file is not None
    assert report.negatives.presence["rectangle"] == (len(train), len(rectangles))
    assert report.negatives.presence["person"] == (len(train), 0)
    assert next(iter(report.negatives.presence)) == "rectangle"  # most often present first
    config_file = tmp_path / "config.yaml"
    config_file.write_text(config.to_yaml())
    main(["data", "validate", "--config", str(config_file), "--no_decode"])
    out = capsys.readouterr().out
    assert "negatives found present by the base model" in out and "rectangle" in out


def test_validate_config_without_cache_says_so(tmp_path: Path, shapes_dir: Path) -> None:
    config = load_config(
        None,
        {
            "model.name_or_path": "tiny",
            "data.train": str(shapes_dir / "train"),
            "data.negative_prompts": str(_vocabulary(tmp_path, "big circle\nsky\ndoor\n")),
            "data.negative_verify_pool": 3,  # a key no run has used
        },
    )
    report = validate_config(config, decode_images=False)[0]
    assert report.negatives.excluded == {"big circle": "circle"}
    assert report.negatives.vocabulary == 2 and report.negatives.cache_file is None


def _vocabulary(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vocabulary.txt"
    path.write_text(text)
    return path
