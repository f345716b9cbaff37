"""Tests for the synthetic shapes generator."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from scipy.ndimage import binary_dilation

from sam3_lora.data.synthetic import (
    ANNOTATION_FILE,
    NEW_SHAPE,
    PARAMS_FILE,
    draw_shapes_image,
    ensure_shapes_dataset,
    generate_shapes_dataset,
)
from sam3_lora.errors import ConfigError, DatasetError

SMALL = {"num_train": 6, "num_val": 2, "image_size": 96, "size_range": (12, 32), "progress": False}


def _load(root: Path, split: str) -> dict:
    return json.loads((root / split / ANNOTATION_FILE).read_text())


def _instances_by_image(coco: dict) -> dict[int, list[dict]]:
    by_image: dict[int, list[dict]] = defaultdict(list)
    for annotation in coco["annotations"]:
        by_image[annotation["image_id"]].append(annotation)
    return by_image


@pytest.fixture(scope="module", params=["plain", "shifted"])
def dataset(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp(request.param)
    return generate_shapes_dataset(root, seed=3, style=request.param, **SMALL)


def test_layout_and_categories(dataset: Path) -> None:
    style = json.loads((dataset / PARAMS_FILE).read_text())["style"]
    expected = ["circle", "rectangle", "triangle"] + ([NEW_SHAPE] if style == "shifted" else [])
    for split, count in (("train", 6), ("valid", 2)):
        coco = _load(dataset, split)
        assert [c["name"] for c in coco["categories"]] == expected
        assert [c["id"] for c in coco["categories"]] == list(range(1, len(expected) + 1))
        assert len(coco["images"]) == count
        for image in coco["images"]:
            with Image.open(dataset / split / image["file_name"]) as pil:
                assert pil.size == (image["width"], image["height"]) == (96, 96)


def test_counts_masks_and_boxes_agree(dataset: Path) -> None:
    for split in ("train", "valid"):
        coco = _load(dataset, split)
        by_image = _instances_by_image(coco)
        for image in coco["images"]:
            annotations = by_image[image["id"]]
            assert 2 <= len(annotations) <= 5
            pixels = np.array(Image.open(dataset / split / image["file_name"]))
            union = np.zeros(pixels.shape[:2], dtype=np.int32)
            for annotation in annotations:
                rle = annotation["segmentation"]
                assert isinstance(rle["counts"], str) and annotation["iscrowd"] == 0
                mask = mask_utils.decode({**rle, "counts": rle["counts"].encode()}).astype(bool)
                ys, xs = np.nonzero(mask)
                x0, y0 = xs.min(), ys.min()
                assert annotation["bbox"] == [x0, y0, xs.max() - x0 + 1, ys.max() - y0 + 1]
                assert annotation["area"] == mask.sum()
                # A visible mask covers exactly one solid colour.
                assert len(np.unique(pixels[mask], axis=0)) == 1
                union += mask
            assert union.max() == 1  # visible parts never overlap


def test_backgrounds(dataset: Path) -> None:
    style = json.loads((dataset / PARAMS_FILE).read_text())["style"]
    coco = _load(dataset, "train")
    by_image = _instances_by_image(coco)
    for image in coco["images"]:
        pixels = np.array(Image.open(dataset / "train" / image["file_name"]))
        covered = np.zeros(pixels.shape[:2], dtype=bool)
        for annotation in by_image[image["id"]]:
            rle = annotation["segmentation"]
            covered |= mask_utils.decode({**rle, "counts": rle["counts"].encode()}).astype(bool)
        background_colours = len(np.unique(pixels[~covered], axis=0))
        if style == "plain":
            assert background_colours == 1
        else:
            assert background_colours > 1


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    options = {**SMALL, "num_train": 3, "num_val": 1, "style": "shifted"}
    first = generate_shapes_dataset(tmp_path / "a", seed=7, **options)
    second = generate_shapes_dataset(tmp_path / "b", seed=7, **options)
    other = generate_shapes_dataset(tmp_path / "c", seed=8, **options)
    for split in ("train", "valid"):
        annotations = (first / split / ANNOTATION_FILE).read_bytes()
        assert annotations == (second / split / ANNOTATION_FILE).read_bytes()
        assert annotations != (other / split / ANNOTATION_FILE).read_bytes()
        for image in _load(first, split)["images"]:
            name = image["file_name"]
            pixels = np.array(Image.open(first / split / name))
            assert np.array_equal(pixels, np.array(Image.open(second / split / name)))
            assert not np.array_equal(pixels, np.array(Image.open(other / split / name)))


def test_absent_shapes_occlusion_and_new_shape_occur() -> None:
    absent = occluded = stars = 0
    for index in range(40):
        rng = np.random.default_rng([0, index])
        _, instances = draw_shapes_image(rng, "shifted", 96, (2, 5), (12, 32))
        absent += len({i.category for i in instances}) < 4
        occluded += sum(i.mask.sum() < i.full_area for i in instances)
        stars += sum(i.category == NEW_SHAPE for i in instances)
        assert all(i.mask.sum() >= 0.3 * i.full_area for i in instances)
    assert absent > 10 and occluded > 0 and stars > 10


def test_distractors_are_drawn_but_never_annotated(tmp_path: Path) -> None:
    """A plain dataset with star distractors: stars in the pixels, not in the annotations."""
    root = generate_shapes_dataset(
        tmp_path / "distract", seed=2, distractors=("star",), **{**SMALL, "num_train": 12}
    )
    coco = _load(root, "train")
    assert [c["name"] for c in coco["categories"]] == ["circle", "rectangle", "triangle"]
    assert json.loads((root / PARAMS_FILE).read_text())["distractors"] == ["star"]
    stars = unlabelled_pixels = 0
    by_image = _instances_by_image(coco)
    for index, image in enumerate(coco["images"]):
        rng = np.random.default_rng([2, 0, 0, index])  # seed, style plain, split train, index
        pixels, instances = draw_shapes_image(rng, "plain", 96, (2, 5), (12, 32), ("star",))
        saved = np.asarray(Image.open(root / "train" / image["file_name"]).convert("RGB"))
        assert np.array_equal(pixels, saved)
        named = [i for i in instances if i.category != "star"]
        assert len(by_image[image["id"]]) == len(named)
        stars += len(instances) - len(named)
        for instance in instances:
            if instance.category == "star":  # painted in its colour, outside every annotation
                assert (saved[instance.mask] == instance.colour).all()
                unlabelled_pixels += int(instance.mask.sum())
    assert stars > 3 and unlabelled_pixels > 0
    # Without distractors the params file keeps its old form, so existing datasets stay valid.
    plain = generate_shapes_dataset(tmp_path / "plain", seed=2, **SMALL)
    assert "distractors" not in json.loads((plain / PARAMS_FILE).read_text())


def test_ensure_reuses_and_regenerates(tmp_path: Path) -> None:
    options = {**SMALL, "num_train": 2, "num_val": 1}
    root = ensure_shapes_dataset(tmp_path / "shapes", **options)
    params_file = root / PARAMS_FILE
    stamp = params_file.stat().st_mtime_ns
    ensure_shapes_dataset(root, **options)
    assert params_file.stat().st_mtime_ns == stamp
    ensure_shapes_dataset(root, **{**options, "num_train": 3})
    assert len(_load(root, "train")["images"]) == 3
    assert len(list((root / "train").glob("*.png"))) == 3
    (root / "train" / "shapes_00000.png").unlink()  # damaged folder: regenerate
    ensure_shapes_dataset(root, **{**options, "num_train": 3})
    assert (root / "train" / "shapes_00000.png").is_file()


def test_refuses_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("user data")
    with pytest.raises(DatasetError, match=r"synth_params\.json"):
        generate_shapes_dataset(tmp_path, **SMALL)
    assert (tmp_path / "mine.txt").exists()


@pytest.mark.parametrize(
    "bad",
    [
        {"style": "fancy"},
        {"size_range": (20, 200)},
        {"shapes_per_image": (5, 2)},
        {"seed": -1},
        {"num_train": 0},
        {"colour": "red"},
        {"distractors": ("hexagon",)},
        {"style": "shifted", "distractors": ("star",)},  # star is a category there
    ],
)
def test_bad_parameters_raise_config_error(tmp_path: Path, bad: dict) -> None:
    with pytest.raises(ConfigError):
        ensure_shapes_dataset(tmp_path / "shapes", **{**SMALL, **bad})
    assert not (tmp_path / "shapes").exists()


def test_size_range_from_config_and_cli(tmp_path: Path) -> None:
    from sam3_lora.cli import main
    from sam3_lora.config import validate_config
    from sam3_lora.data.sources import synthetic_root

    config = validate_config(
        {
            "data": {
                "synthetic": {
                    "output_dir": str(tmp_path / "from-config"),
                    "num_train": 2,
                    "num_val": 1,
                    "image_size": 96,
                    "size_range": [12, 24],
                }
            }
        },
        source="test",
    )
    root = synthetic_root(config)
    assert json.loads((root / PARAMS_FILE).read_text())["size_range"] == [12, 24]
    for annotation in _load(root, "train")["annotations"]:
        assert max(annotation["bbox"][2:]) <= 24

    cli_root = tmp_path / "from-cli"
    args = ["data", "synth", "--output", str(cli_root), "--num_train", "2", "--num_val", "1"]
    assert main([*args, "--image_size", "96", "--size_range", "10", "20"]) == 0
    assert json.loads((cli_root / PARAMS_FILE).read_text())["size_range"] == [10, 20]


def test_default_size_range_scales_with_the_image(tmp_path: Path) -> None:
    from sam3_lora.data.synthetic import DEFAULT_SIZE_RANGE, default_size_range

    assert default_size_range(256) == DEFAULT_SIZE_RANGE
    root = ensure_shapes_dataset(tmp_path / "small", num_train=2, num_val=1, image_size=64)
    assert json.loads((root / PARAMS_FILE).read_text())["size_range"] == [10, 28]


def test_textures_never_camouflage_a_shape() -> None:
    """Each shifted texture stays below the shapes' own contrast: nearly all background pixels
    that touch a shape differ clearly from its colour (5th percentile of the RGB distance)."""
    for index in range(40):
        rng = np.random.default_rng([5, index])
        pixels, instances = draw_shapes_image(rng, "shifted", 128, (2, 4), (16, 48))
        covered = np.any([i.mask for i in instances], axis=0)
        for instance in instances:
            ring = binary_dilation(instance.mask, iterations=2) & ~covered
            if ring.sum() < 20:
                continue
            distance = np.linalg.norm(pixels[ring].astype(float) - instance.colour, axis=1)
            assert np.percentile(distance, 5) > 55, (index, instance.category)
