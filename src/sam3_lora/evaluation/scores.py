"""The metrics of one evaluated model: COCO AP / AR, cgF1, mask unions and prompt following,
overall, per category and along the score-threshold sweep (see :mod:`sam3_lora.evaluation.runner`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from sam3_lora.evaluation.metrics import (
    COCO_STAT_NAMES,
    cgf1_metrics,
    cgf1_per_category,
    coco_detection_metrics,
)

if TYPE_CHECKING:
    from sam3_lora.evaluation.runner import ModelRun

COCO_KEYS = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR@100")
CGF1_KEYS = ("cgF1", "cgF1@50", "cgF1@75", "positive_micro_F1", "IL_MCC")


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def compute_metrics(
    gt: dict[str, Any], run: ModelRun, threshold: float, names: dict[int, str]
) -> dict[str, Any]:
    """Overall and per-category metrics of one model run."""
    overall: dict[str, float] = {}
    coco_stats = {}
    for iou_type in ("segm", "bbox"):
        stats = coco_detection_metrics(gt, run.results, iou_type)
        coco_stats[iou_type] = stats
        overall.update({f"{iou_type}/{k}": stats[k] for k in COCO_KEYS})
    cgf1 = {t: cgf1_metrics(gt, run.results, t, threshold) for t in ("segm", "bbox")}
    overall.update({k: cgf1["segm"][k] for k in CGF1_KEYS})
    overall.update({f"bbox/{k}": cgf1["bbox"][k] for k in CGF1_KEYS})
    sweep = threshold_sweep(gt, run, known_cgf1={threshold: cgf1["segm"]})
    at_threshold = sweep[run.sweep_thresholds.index(threshold)]
    for key in ("miou", "dice", "absent_fire_rate", "negative_fire_rate", "giou"):
        overall[key] = at_threshold[key]

    per_category_cgf1 = cgf1_per_category(gt, run.results, "segm", threshold)
    per_category = {}
    for category_id, name in names.items():
        pairs = [p for p in run.pairs if p["category_id"] == category_id]
        cat_cgf1 = per_category_cgf1.get(category_id, {})
        per_category[name] = {
            "segm/AP": coco_stats["segm"]["per_category_AP"].get(category_id, float("nan")),
            "bbox/AP": coco_stats["bbox"]["per_category_AP"].get(category_id, float("nan")),
            **{k: cat_cgf1.get(k, float("nan")) for k in CGF1_KEYS},
            "miou": _mean([p["iou"] for p in pairs if p["has_gt"]]),
            "dice": _mean([p["dice"] for p in pairs if p["has_gt"]]),
            "absent_fire_rate": _mean([float(p["fires"]) for p in pairs if not p["has_gt"]]),
            "images_with_gt": sum(p["has_gt"] for p in pairs),
        }
    best = max(sweep, key=lambda row: row["cgF1"]) if sweep else None
    if best is not None and not best["cgF1"] > 0:
        best = None  # no threshold finds anything: no operating point to recommend
    return {
        "source": run.source,
        "overall": overall,
        "threshold_sweep": sweep,
        "best_threshold": None if best is None else dict(best),
        "per_category": per_category,
        "cgf1_segm": cgf1["segm"],
        "cgf1_bbox": cgf1["bbox"],
        "coco_segm_stats": {k: coco_stats["segm"][k] for k in COCO_STAT_NAMES},
        "coco_bbox_stats": {k: coco_stats["bbox"][k] for k in COCO_STAT_NAMES},
        "negative_prompts": len(run.negative_scores),
        "seconds": round(run.seconds, 2),
        "images_per_second": round(len(run.image_scores) / max(run.seconds, 1e-9), 2),
    }


def threshold_sweep(
    gt: dict[str, Any], run: ModelRun, known_cgf1: dict[float, dict[str, float]] | None = None
) -> list[dict[str, float]]:
    """The thresholded metrics of ``run`` at each of its sweep thresholds, one row each.

    ``known_cgf1`` maps thresholds to :func:`cgf1_metrics` results already computed (masks).
    """
    known_cgf1 = known_cgf1 or {}
    positive = [p for p in run.pairs if p["has_gt"]]
    absent = [p for p in run.pairs if not p["has_gt"]]
    rows = []
    for index, threshold in enumerate(run.sweep_thresholds):
        cgf1 = known_cgf1.get(threshold) or cgf1_metrics(gt, run.results, "segm", threshold)
        negative_ok = [float(s < threshold) for s in run.negative_scores]
        rows.append(
            {
                "threshold": threshold,
                **{k: cgf1[k] for k in ("cgF1", "positive_micro_F1", "IL_MCC")},
                "giou": _mean([p["sweep_iou"][index] for p in run.pairs] + negative_ok),
                "miou": _mean([p["sweep_iou"][index] for p in positive]),
                "dice": _mean([p["sweep_dice"][index] for p in positive]),
                "absent_fire_rate": _mean([float(p["best_score"] >= threshold) for p in absent]),
                "negative_fire_rate": _mean([1.0 - ok for ok in negative_ok]),
            }
        )
    return rows
