"""``evaluate``: metrics over a split, base vs adapter, reports that open offline.

COCOeval and cgF1 on cases with known answers are covered in tests/test_metrics.py; here the
pipeline around them runs on the tiny random SAM3 with a random adapter.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sam3_lora.cli import main
from sam3_lora.config import load_config
from sam3_lora.data.coco import CocoDataset
from sam3_lora.evaluation.runner import choose_negatives, evaluate_from_config, ground_truth_dict
from tests.adapters import make_tiny_adapter


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_adapter(tmp_path_factory.mktemp("adapter") / "final")


def test_evaluate_compares_base_and_adapter(
    adapter_dir: Path, shapes_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "evaluate",
            "--adapter",
            str(adapter_dir),
            "--model",
            "tiny-random",
            "--set",
            f"data.valid={shapes_dir / 'valid'}",
            "--compare-base",
            "--negative_prompts",
            "2",
            "--threshold",
            "0.25",
            "--output_dir",
            str(tmp_path),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "adapter − base" in printed and "cgF1" in printed

    metrics = json.loads((tmp_path / "metrics.json").read_text())  # strict JSON: no NaN
    assert metrics["num_images"] == 4 and metrics["negative_prompts_per_image"] == 2
    assert set(metrics["models"]) == {"base", "adapter"}
    overall = metrics["models"]["adapter"]["overall"]
    for key in (
        "segm/AP",
        "segm/AP50",
        "segm/AP75",
        "segm/AP_small",
        "segm/AR@100",
        "bbox/AP",
        "cgF1",
        "cgF1@50",
        "cgF1@75",
        "positive_micro_F1",
        "IL_MCC",
        "miou",
        "dice",
        "negative_fire_rate",
        "absent_fire_rate",
        "giou",
    ):
        assert key in overall
    assert 0.0 <= overall["negative_fire_rate"] <= 1.0
    assert metrics["models"]["adapter"]["negative_prompts"] == 4 * 2
    assert metrics["models"]["adapter"]["cgf1_segm"]["num_datapoints"] == 4 * 3
    assert set(metrics["models"]["adapter"]["per_category"]) == {"circle", "rectangle", "triangle"}
    assert "difference" in metrics

    # The sweep holds the configured threshold, agrees with the overall numbers there, and false
    # alarms can only fall as the threshold rises.
    adapter = metrics["models"]["adapter"]
    sweep = adapter["threshold_sweep"]
    assert [row["threshold"] for row in sweep] == [
        0.1,
        0.2,
        0.25,
        0.3,
        0.4,
        0.5,
        0.6,
        0.7,
        0.8,
        0.9,
    ]
    at_threshold = sweep[2]
    for key in ("cgF1", "giou", "absent_fire_rate", "negative_fire_rate"):
        assert at_threshold[key] == pytest.approx(overall[key], nan_ok=True), key
    for key in ("absent_fire_rate", "negative_fire_rate"):
        values = [row[key] for row in sweep]
        assert values == sorted(values, reverse=True), key
    best_cgf1 = max(row["cgF1"] for row in sweep)
    if best_cgf1 > 0:
        assert adapter["best_threshold"]["cgF1"] == best_cgf1
    else:  # a random adapter may find nothing at any threshold: then nothing is recommended
        assert adapter["best_threshold"] is None
    assert "by score threshold" in printed
    assert (tmp_path / "threshold_sweep.png").stat().st_size > 0
    assert (tmp_path / "gallery.png").stat().st_size > 0  # the worst images, as a picture
    assert "## By score threshold" in (tmp_path / "report.md").read_text()

    page = (tmp_path / "report.html").read_text()
    assert re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page) is None  # nothing to fetch
    assert "<script" not in page and "@import" not in page and "url(" not in page
    # gallery (every image, worst first) and the sweep plot
    assert page.count('src="data:image/png;base64,') == 4 + 1
    assert "| segm/AP |" in (tmp_path / "report.md").read_text()

    # What was scored is written out: plain pycocotools on those files gives the same AP.
    assert metrics["adapter_merged_in_memory"] is True
    assert metrics["prediction_files"] == {
        "base": "predictions.base.coco.json",
        "adapter": "predictions.coco.json",
    }
    assert metrics["metric_descriptions"]["giou"].startswith("gRefCOCO")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ground_truth = COCO(str(tmp_path / metrics["ground_truth_file"]))
    for name, file in metrics["prediction_files"].items():
        results = json.loads((tmp_path / file).read_text())
        if not results:
            continue
        scorer = COCOeval(ground_truth, ground_truth.loadRes(results), "segm")
        scorer.evaluate()
        scorer.accumulate()
        scorer.summarize()
        assert scorer.stats[0] == pytest.approx(metrics["models"][name]["overall"]["segm/AP"])


def test_merged_adapter_evaluates_like_the_unmerged_one(adapter_dir: Path, shapes_dir: Path):
    from sam3_lora.evaluation.runner import evaluate_dataset
    from sam3_lora.predict.inference import SAM3LoRAInference

    coco = CocoDataset.from_split_dir(shapes_dir / "valid")
    found = {}
    for merge in (False, True):
        predictor = SAM3LoRAInference(weights_path=adapter_dir, threshold=0.2)
        metrics, runs = evaluate_dataset(
            predictor, coco, negative_prompts=1, threshold=0.2, merge_adapter=merge
        )
        assert metrics["adapter_merged_in_memory"] is merge
        assert predictor.has_adapter is not merge
        found[merge] = (metrics["models"]["adapter"]["overall"], runs["adapter"].results)
    (plain, plain_results), (merged, merged_results) = found[False], found[True]
    assert len(plain_results) == len(merged_results)
    scores = [r["score"] for r in plain_results], [r["score"] for r in merged_results]
    assert scores[0] == pytest.approx(scores[1], abs=1e-4)
    for key in ("segm/AP", "cgF1", "miou", "giou", "absent_fire_rate"):
        assert plain[key] == pytest.approx(merged[key], abs=1e-3, nan_ok=True), key


def test_evaluate_from_config_base_only(shapes_dir: Path, tmp_path: Path) -> None:
    config = load_config(
        None,
        {
            "model.name_or_path": "tiny-random",
            "data.valid": str(shapes_dir / "valid"),
            "output.output_dir": str(tmp_path / "run"),
        },
    )
    metrics = evaluate_from_config(config, None, negative_prompts=0, max_images=2, gallery_size=1)
    assert list(metrics["models"]) == ["base"] and "difference" not in metrics
    assert metrics["num_images"] == 2
    assert Path(metrics["files"]["report.html"]).parent == tmp_path / "run" / "eval-valid"


def test_ground_truth_and_negative_choice(shapes_dir: Path) -> None:
    coco = CocoDataset.from_split_dir(shapes_dir / "valid")
    gt = ground_truth_dict(coco)
    assert len(gt["images"]) == 4 and all(a.get("segmentation") for a in gt["annotations"])
    vocabulary = ["a", "b", "c", "d", "e"]
    assert choose_negatives(vocabulary, 2, 0) == ["a", "b"]
    assert choose_negatives(vocabulary, 2, 1) == ["c", "d"]
    assert choose_negatives(vocabulary, 9, 0) == vocabulary


def test_missing_split_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["evaluate", "--model", "tiny-random", "--split", "test"])
    assert code == 2
    assert "data.test is not set" in capsys.readouterr().err


def test_ground_truth_as_predictions_scores_perfectly(shapes_dir: Path) -> None:
    """The evaluation pipeline's own known answer: a model that returns the ground truth."""
    from sam3_lora.data.coco import CocoDataset
    from sam3_lora.evaluation.runner import (
        SWEEP_THRESHOLDS,
        ModelRun,
        compute_metrics,
        ground_truth_dict,
    )

    coco = CocoDataset.from_split_dir(shapes_dir / "valid")
    gt = ground_truth_dict(coco)
    results = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "segmentation": a["segmentation"],
            "bbox": a["bbox"],
            "score": 1.0,
        }
        for a in gt["annotations"]
    ]
    present = {(a["image_id"], a["category_id"]) for a in gt["annotations"]}
    swept = len(SWEEP_THRESHOLDS)
    pairs = [
        {"category_id": c["id"], "has_gt": (i["id"], c["id"]) in present, "iou": 1.0,
         "dice": 1.0, "fires": (i["id"], c["id"]) in present,
         "best_score": float((i["id"], c["id"]) in present),
         "sweep_iou": [1.0] * swept, "sweep_dice": [1.0] * swept}
        for i in gt["images"]
        for c in gt["categories"]
    ]  # fmt: skip
    run = ModelRun(
        "oracle",
        "ground truth",
        results=results,
        pairs=pairs,
        negative_scores=[0.0],
    )
    names = {c["id"]: c["name"] for c in gt["categories"]}
    oracle = compute_metrics(gt, run, threshold=0.5, names=names)
    overall = oracle["overall"]
    assert overall["segm/AP"] == pytest.approx(1.0)
    assert overall["bbox/AP"] == pytest.approx(1.0)
    assert overall["cgF1"] == pytest.approx(1.0, abs=1e-3)
    assert overall["IL_MCC"] == pytest.approx(1.0, abs=1e-3)
    assert overall["absent_fire_rate"] == 0.0
    assert overall["giou"] == 1.0
    assert oracle["best_threshold"]["cgF1"] == pytest.approx(1.0, abs=1e-3)
    for row in oracle["threshold_sweep"]:
        assert row["cgF1"] == pytest.approx(1.0, abs=1e-3) and row["giou"] == 1.0

    # A model that never answers: right on every absent pair and on the one negative prompt.
    silent_pairs = [
        {**p, "iou": float(not p["has_gt"]), "dice": float(not p["has_gt"]), "fires": False,
         "best_score": 0.0, "sweep_iou": [float(not p["has_gt"])] * swept,
         "sweep_dice": [float(not p["has_gt"])] * swept}
        for p in pairs
    ]  # fmt: skip
    empty = ModelRun(
        "silent", "nothing", results=[], pairs=silent_pairs, negative_scores=[0.0],
    )  # fmt: skip
    silent_block = compute_metrics(gt, empty, threshold=0.5, names=names)
    assert silent_block["best_threshold"] is None  # nothing found at any threshold
    silent = silent_block["overall"]
    assert silent["segm/AP"] == 0.0 and silent["cgF1"] == 0.0
    absent = sum(not p["has_gt"] for p in pairs)
    assert silent["giou"] == pytest.approx((absent + 1) / (len(pairs) + 1))
    assert silent["miou"] == 0.0
