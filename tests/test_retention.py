"""Retention: the share of the base model's detections (concepts outside the dataset) the adapter
keeps, and the IoU of their answers. Known answers: the base against itself scores 1, an adapter
that answers nothing 0; in training validation (``val/retention``) and in ``evaluate``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sam3_lora.cli import main
from sam3_lora.config import LoraSettings, load_config
from sam3_lora.data.coco import CocoDataset
from sam3_lora.data.subset import keep_categories
from sam3_lora.data.synthetic import generate_shapes_dataset
from sam3_lora.data.transforms import build_transforms
from sam3_lora.evaluation.metrics.retention import count_kept, summarize_retention
from sam3_lora.evaluation.runner import evaluate_dataset
from sam3_lora.lora import apply_lora_to_model, save_lora_weights
from sam3_lora.models import load_sam3
from sam3_lora.predict.inference import SAM3LoRAInference
from sam3_lora.tasks.concept.loss import Sam3ConceptLoss
from sam3_lora.tasks.concept.module import ConceptModel, select_prompts
from sam3_lora.tasks.concept.samples import (
    RETENTION_PROMPT_ID,
    ConceptDataset,
    collate_concept_samples,
)
from sam3_lora.tasks.concept.spec import PIXEL_MEAN, PIXEL_STD
from sam3_lora.tasks.concept.task import ConceptTask
from sam3_lora.tasks.concept.validation import retention_statistics, summarize_validation

TINY_THRESHOLD = 0.3


def test_count_kept_and_summary_known_answers() -> None:
    assert count_kept(np.eye(3)) == 3  # the base against itself
    assert count_kept(np.zeros((3, 0))) == 0  # an adapter that answers nothing
    assert count_kept(np.array([[0.9, 0.6], [0.8, 0.1]])) == 2
    assert count_kept(np.array([[0.9], [0.8]])) == 2  # the base's duplicates: one answer keeps both
    assert count_kept(np.array([[0.4], [0.2]])) == 0  # below IoU 0.5: not the same object
    itself = summarize_retention([(3, 3, 1.0), (2, 2, 1.0), (0, 0, 1.0)])
    assert itself["retention"] == 1.0 and itself["retention_iou"] == 1.0
    assert itself["retention_prompts"] == 2  # pairs where the base finds nothing don't count
    silent = summarize_retention([(3, 0, 0.0), (2, 0, 0.0)])
    assert silent["retention"] == 0.0 and silent["retention_iou"] == 0.0
    assert summarize_retention([(4, 1, 0.5), (1, 1, 1.0)])["retention"] == pytest.approx(0.4)
    assert np.isnan(summarize_retention([])["retention"])


@pytest.fixture(scope="module")
def circles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Circles annotated; rectangles and triangles drawn, unannotated (outside the dataset)."""
    root = tmp_path_factory.mktemp("retention")
    full = generate_shapes_dataset(
        root / "full", num_train=2, num_val=6, seed=0, image_size=256, progress=False
    )
    keep_categories(full / "valid", ["circle"], root / "valid")
    (root / "vocabulary.txt").write_text("rectangle\ntriangle\nperson\n")
    return root


def _zero_adapter(folder: Path) -> Path:
    """A fresh LoRA adapter on the tiny SAM3: B = 0, so it answers exactly as the base."""
    loaded = load_sam3("tiny")
    network = apply_lora_to_model(loaded.model, LoraSettings(rank=4, alpha=8, dropout=0.0))
    save_lora_weights(network, folder)
    return folder


def _task_and_batch(circles: Path) -> tuple[ConceptTask, object]:
    loaded = load_sam3("tiny")
    network = apply_lora_to_model(loaded.model, LoraSettings(rank=4, alpha=8, dropout=0.0))
    task = ConceptTask(
        ConceptModel(network, loaded.processor.tokenizer),
        Sam3ConceptLoss(),
        score_threshold=TINY_THRESHOLD,
    )
    coco = CocoDataset.from_split_dir(circles / "valid")
    transform = build_transforms(224, train=False, pixel_mean=PIXEL_MEAN, pixel_std=PIXEL_STD)
    dataset = ConceptDataset(coco, transform, train=False, num_negative_prompts=1)
    plain = collate_concept_samples([dataset[i] for i in range(4)])
    dataset.set_retention_prompts([["rectangle", "triangle"]] * len(dataset))
    with_retention = collate_concept_samples([dataset[i] for i in range(4)])
    return task, (plain, with_retention)


def test_validation_retention_of_the_base_against_itself(circles: Path) -> None:
    task, (plain, batch) = _task_and_batch(circles)
    task.model.eval()
    with torch.no_grad():
        statistics = task.validation_statistics(task.model(batch), batch)
        reference = task.validation_statistics(task.model(plain), plain)
    assert len(statistics["retention/base"]) == 4 * 2 and statistics["retention/base"].sum() > 0
    metrics = summarize_validation([statistics])
    assert metrics["val/retention"] == 1.0 and metrics["val/retention_iou"] == 1.0
    # retention prompts count in nothing else: the other numbers are those without them
    expected = summarize_validation([reference])
    assert "val/retention" not in expected
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-5), key

    # an adapter that answers nothing on them: retention 0
    rows = [r for r, c in enumerate(batch.prompt_category_ids) if c == RETENTION_PROMPT_ID]
    with torch.no_grad():
        base = select_prompts(task.model(batch), torch.tensor(rows))
    silent = dataclasses.replace(base, logits=torch.full_like(base.logits, -30.0))
    zero = retention_statistics(base, silent, batch.pixel_values.shape[-2:], TINY_THRESHOLD)
    summary = summarize_validation([{**reference, **zero}])
    assert summary["val/retention"] == 0.0 and summary["val/retention_iou"] == 0.0
    itself = retention_statistics(base, base, batch.pixel_values.shape[-2:], TINY_THRESHOLD)
    assert torch.equal(itself["retention/kept"], itself["retention/base"])


def _config(circles: Path, tmp_path: Path, **extra: object):
    return load_config(
        None,
        {
            "model.name_or_path": "tiny",
            "data.valid": str(circles / "valid"),
            "data.negative_prompts": str(circles / "vocabulary.txt"),
            "data.negative_verify_threshold": TINY_THRESHOLD,
            "evaluation.score_threshold": TINY_THRESHOLD,
            "output.output_dir": str(tmp_path / "run"),
            **extra,
        },
    )


def test_evaluate_retention_of_the_base_against_itself(
    circles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    adapter = _zero_adapter(tmp_path / "zero")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(_config(circles, tmp_path).to_yaml())
    output = tmp_path / "eval"
    args = ["evaluate", "--config", str(config_file), "--adapter", str(adapter)]
    assert main([*args, "--compare-base", "--output_dir", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "retention: base detections on concepts outside the dataset" in printed

    metrics = json.loads((output / "metrics.json").read_text())
    retention = metrics["retention"]
    assert retention["retention"] == 1.0 and retention["retention_iou"] == 1.0
    assert retention["retention_detections"] > 0
    assert set(retention["per_concept"]) <= {"rectangle", "triangle"}
    assert metrics["models"]["adapter"]["overall"]["retention"] == 1.0
    assert metrics["models"]["base"]["overall"]["retention"] is None  # n/a for the base
    assert metrics["metric_descriptions"]["retention"].startswith("share of the base")
    verification = metrics["negative_verification"]
    assert "rectangle" in verification["most_present"] and verification["dropped"] > 0
    assert "## Retention" in (output / "report.md").read_text()
    page = (output / "report.html").read_text()
    assert "<h2>Retention</h2>" in page and "the adapter lost nothing" in page

    # without --compare-base: the base answers the retention prompts alone; the prediction
    # file stays the adapter's
    assert main([*args, "--output_dir", str(tmp_path / "alone")]) == 0
    alone = json.loads((tmp_path / "alone" / "metrics.json").read_text())
    assert list(alone["models"]) == ["adapter"]
    assert alone["retention"]["retention"] == 1.0
    assert alone["prediction_files"] == {"adapter": "predictions.coco.json"}


def test_evaluate_does_not_count_what_the_base_finds_as_false_positives(
    circles: Path, tmp_path: Path
) -> None:
    coco = CocoDataset.from_split_dir(circles / "valid")
    rates = {}
    for verify in (False, True):
        config = _config(circles, tmp_path, **{"evaluation.verify_negatives": verify})
        predictor = SAM3LoRAInference(config, threshold=TINY_THRESHOLD)
        metrics, _ = evaluate_dataset(
            predictor,
            coco,
            negative_prompts=3,
            vocabulary=["rectangle", "triangle", "person"],
            threshold=TINY_THRESHOLD,
            config=config,
        )
        rates[verify] = metrics["models"]["base"]["overall"]["negative_fire_rate"]
    # unverified, the base "fires on negatives" that are in the pictures; verified, it doesn't
    assert rates[False] > 0.3 and rates[True] <= 0.05, rates
