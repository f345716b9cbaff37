"""SAM3's cgF1 ("classification-gated F1") for promptable concept segmentation.

Our own implementation of the semantics of Meta's ``sam3/eval/cgf1_eval.py`` (``CGF1Eval``):

- A **datapoint** is an (image_id, category_id) pair: one text prompt on one image. By default
  every category of ``gt["categories"]`` is prompted on every image of ``gt["images"]``; images
  flagged ``"is_instance_exhaustive": false`` are left out, as Meta's evaluator does.
- Predictions count when ``score >= score_threshold`` (0.5; score = detection x presence).
  Crowd ground truth (``iscrowd: 1``) is dropped (pycocotools sets ``ignore = iscrowd``); a
  prediction on a crowd region is therefore a false positive.
- In a datapoint with ground truth and predictions, predictions and ground truths are matched
  one-to-one once, by Hungarian assignment maximising the summed IoU; at each IoU threshold
  0.50:0.05:0.95 a matched pair with IoU >= threshold is a TP; FP = predictions - TP,
  FN = ground truths - TP.
- Image level: IL_TP = ground truth and predictions, IL_FN = ground truth only, IL_FP =
  predictions only, IL_TN = neither. IL_MCC is their Matthews correlation,
  ``(TP*TN - FP*FN) / (sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) + 1e-6)``: 0 when any factor is 0,
  e.g. when no datapoint is negative, which makes cgF1 0 however good the masks.
- ``positive_micro_F1`` sums TP and FN over all datapoints and FP over datapoints with ground
  truth only; P = TP / (TP + FP + 1e-4), R = TP / (TP + FN + 1e-4), F1 = 2PR / (P + R + 1e-4).
- ``cgF1 = positive_micro_F1 x IL_MCC`` at each threshold; ``cgF1`` is the mean over the ten
  thresholds, ``cgF1@50`` / ``cgF1@75`` the values at 0.5 / 0.75. Because of the smoothing a
  perfect prediction scores slightly below 1 (about 1 - 1e-4 / TP).

Not reproduced: Meta's "oracle" mode (best of several ground-truth files per datapoint).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
from scipy.optimize import linear_sum_assignment

from sam3_lora.errors import DatasetError
from sam3_lora.evaluation.metrics.coco import (
    IouType,
    annotation_box,
    annotation_rle,
    check_iou_type,
    image_sizes,
)

logger = logging.getLogger(__name__)

#: IoU thresholds 0.50:0.05:0.95, the same float values as pycocotools' ``COCOeval``.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
_REPORTED = {"": None, "@50": 0, "@75": 5}  # key suffix -> threshold index (None: mean)
_EPS = 1e-4  # Meta's smoothing of box-level precision, recall and F1
_IL_EPS = 1e-6  # Meta's smoothing of the image-level ratios and MCC

Datapoint = tuple[Any, Any]


@dataclass
class DatapointCounts:
    """Matching counts per datapoint; row ``d`` belongs to ``datapoints[d]``.

    Attributes:
        datapoints: (image_id, category_id) pairs, ``D`` of them.
        num_gt: ``[D]`` non-crowd ground-truth instances.
        num_pred: ``[D]`` predictions with score >= the threshold.
        tp: ``[D, 10]`` matched pairs with IoU >= each of :data:`IOU_THRESHOLDS`.
    """

    datapoints: list[Datapoint]
    num_gt: np.ndarray
    num_pred: np.ndarray
    tp: np.ndarray

    def select(self, keep: np.ndarray) -> DatapointCounts:
        """The datapoints where the boolean ``keep`` [D] is true."""
        return DatapointCounts(
            datapoints=[dp for dp, k in zip(self.datapoints, keep, strict=True) if k],
            num_gt=self.num_gt[keep],
            num_pred=self.num_pred[keep],
            tp=self.tp[keep],
        )


def default_datapoints(gt: dict) -> list[Datapoint]:
    """Every category on every instance-exhaustive image of ``gt``."""
    return [
        (img["id"], cat["id"])
        for img in gt.get("images", [])
        if img.get("is_instance_exhaustive", True)
        for cat in gt.get("categories", [])
    ]


def _matched_tp(pred_regions: Sequence, gt_regions: Sequence) -> np.ndarray:
    """``[10]`` TPs of a one-to-one Hungarian matching on IoU, at each IoU threshold."""
    ious = mask_utils.iou(pred_regions, gt_regions, [0] * len(gt_regions))
    rows, cols = linear_sum_assignment(ious, maximize=True)
    matched = ious[rows, cols]
    return (matched[None, :] >= IOU_THRESHOLDS[:, None]).sum(axis=1)


def count_datapoints(
    gt: dict,
    results: list[dict],
    iou_type: IouType = "segm",
    score_threshold: float = 0.5,
    datapoints: Iterable[Datapoint] | None = None,
) -> DatapointCounts:
    """Match ``results`` to ``gt`` in each datapoint (see the module docstring).

    Args:
        gt: COCO dataset dict.
        results: COCO results with ``score``; a result whose (image_id, category_id) is not a
            datapoint is ignored (and counted in a warning).
        iou_type: ``"segm"`` (mask IoU) or ``"bbox"``.
        score_threshold: predictions with ``score >= score_threshold`` count.
        datapoints: (image_id, category_id) pairs to evaluate; default :func:`default_datapoints`.
            Pairs may name categories that are not in ``gt`` (negative prompts: no ground truth).
    """
    check_iou_type(iou_type)
    requested = default_datapoints(gt) if datapoints is None else datapoints
    points = list(dict.fromkeys(tuple(dp) for dp in requested))  # JSON gives lists
    sizes = image_sizes(gt)
    gts: dict[Datapoint, list[dict]] = defaultdict(list)
    for ann in gt.get("annotations", []):
        if not ann.get("iscrowd", 0):
            gts[ann["image_id"], ann["category_id"]].append(ann)
    preds: dict[Datapoint, list[dict]] = defaultdict(list)
    for i, result in enumerate(results):
        if "score" not in result:
            raise DatasetError(f"result {i} (image_id={result.get('image_id')}) has no 'score'")
        if result["score"] >= score_threshold:
            preds[result["image_id"], result["category_id"]].append(result)

    wanted = set(points)
    ignored = sum(1 for r in results if (r["image_id"], r["category_id"]) not in wanted)
    if ignored:
        logger.warning("cgF1: ignored %d results on pairs that are not datapoints", ignored)

    region = annotation_rle if iou_type == "segm" else annotation_box
    num_gt = np.array([len(gts.get(dp, ())) for dp in points], dtype=np.int64)
    num_pred = np.array([len(preds.get(dp, ())) for dp in points], dtype=np.int64)
    tp = np.zeros((len(points), len(IOU_THRESHOLDS)), dtype=np.int64)
    for d, dp in enumerate(points):
        if num_gt[d] and num_pred[d]:
            tp[d] = _matched_tp(
                [region(r, sizes) for r in preds[dp]], [region(a, sizes) for a in gts[dp]]
            )
    return DatapointCounts(datapoints=points, num_gt=num_gt, num_pred=num_pred, tp=tp)


def _f1(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    return 2 * precision * recall / (precision + recall + _EPS)


def summarize_cgf1(counts: DatapointCounts) -> dict[str, float]:
    """cgF1 and its parts from per-datapoint counts (see :func:`cgf1_metrics` for the keys)."""
    num_gt, num_pred = counts.num_gt[:, None], counts.num_pred[:, None]
    tp = counts.tp
    fp, fn = num_pred - tp, num_gt - tp
    has_gt, has_pred = counts.num_gt > 0, counts.num_pred > 0
    positive = has_gt & has_pred

    tp_sum, fp_sum, fn_sum = tp.sum(axis=0), fp.sum(axis=0), fn.sum(axis=0)
    positive_fp_sum = fp[has_gt].sum(axis=0)
    precision = tp_sum / (tp_sum + fp_sum + _EPS)
    positive_precision = tp_sum / (tp_sum + positive_fp_sum + _EPS)
    recall = tp_sum / (tp_sum + fn_sum + _EPS)
    # positive_macro_F1: mean of the per-datapoint F1 over datapoints with ground truth and
    # predictions (NaN if there are none; Meta divides 0 by 0 there).
    local_p = tp[positive] / (tp[positive] + fp[positive] + _EPS)
    local_r = tp[positive] / (tp[positive] + fn[positive] + _EPS)
    macro = _f1(local_p, local_r).mean(axis=0) if positive.any() else np.full(len(tp_sum), np.nan)

    il_tp, il_fn = int(positive.sum()), int((has_gt & ~has_pred).sum())
    il_fp, il_tn = int((~has_gt & has_pred).sum()), int((~has_gt & ~has_pred).sum())
    il_precision = il_tp / (il_tp + il_fp + _IL_EPS)
    il_recall = il_tp / (il_tp + il_fn + _IL_EPS)
    denominator = float((il_tp + il_fp) * (il_tp + il_fn) * (il_tn + il_fp) * (il_tn + il_fn))
    il_mcc = (il_tp * il_tn - il_fp * il_fn) / (denominator**0.5 + _IL_EPS)

    per_threshold = {
        "cgF1": _f1(positive_precision, recall) * il_mcc,
        "positive_micro_F1": _f1(positive_precision, recall),
        "positive_micro_precision": positive_precision,
        "positive_macro_F1": macro,
        "recall": recall,
        "precision": precision,
        "F1": _f1(precision, recall),
    }
    metrics: dict[str, float] = {}
    for name, values in per_threshold.items():
        for suffix, t in _REPORTED.items():
            metrics[name + suffix] = float(values.mean() if t is None else values[t])
    metrics.update(
        IL_MCC=float(il_mcc),
        IL_precision=float(il_precision),
        IL_recall=float(il_recall),
        IL_F1=float(2 * il_precision * il_recall / (il_precision + il_recall + _IL_EPS)),
        IL_FPR=float(il_fp / (il_fp + il_tn + _IL_EPS)),
        IL_TP=il_tp,
        IL_FP=il_fp,
        IL_FN=il_fn,
        IL_TN=il_tn,
        num_datapoints=len(counts.datapoints),
    )
    for suffix, t in _REPORTED.items():
        if t is not None:
            metrics["TP" + suffix] = int(tp_sum[t])
            metrics["FP" + suffix] = int(fp_sum[t])
            metrics["positive_micro_FP" + suffix] = int(positive_fp_sum[t])
            metrics["FN" + suffix] = int(fn_sum[t])
    return metrics


def cgf1_metrics(
    gt: dict,
    results: list[dict],
    iou_type: IouType = "segm",
    score_threshold: float = 0.5,
    datapoints: Iterable[Datapoint] | None = None,
) -> dict[str, float]:
    """SAM3's cgF1 of ``results`` against ``gt`` (arguments as in :func:`count_datapoints`).

    Returns:
        For each of ``cgF1``, ``positive_micro_F1``, ``positive_micro_precision``,
        ``positive_macro_F1``, ``recall``, ``precision`` and ``F1`` (the last two count FPs of
        all datapoints): the mean over IoU 0.50:0.95 under the bare name, and the values at
        0.5 and 0.75 under ``name@50`` / ``name@75``. Image level: ``IL_MCC``,
        ``IL_precision``, ``IL_recall``, ``IL_F1``, ``IL_FPR`` and the counts ``IL_TP``,
        ``IL_FP``, ``IL_FN``, ``IL_TN``, ``num_datapoints``. Summed counts at 0.5 and 0.75:
        ``TP@50``, ``FP@50``, ``positive_micro_FP@50``, ``FN@50`` (and ``@75``). Use
        :func:`count_datapoints` for the counts at every threshold.
    """
    return summarize_cgf1(count_datapoints(gt, results, iou_type, score_threshold, datapoints))


def cgf1_per_category(
    gt: dict,
    results: list[dict],
    iou_type: IouType = "segm",
    score_threshold: float = 0.5,
    datapoints: Iterable[Datapoint] | None = None,
) -> dict[Any, dict[str, float]]:
    """:func:`cgf1_metrics` restricted to each category's datapoints: ``{category_id: metrics}``.

    A category present on every one of its images has no negative datapoint, so its IL_MCC and
    cgF1 are 0: read its ``positive_micro_F1`` instead.
    """
    counts = count_datapoints(gt, results, iou_type, score_threshold, datapoints)
    categories = np.array([category_id for _, category_id in counts.datapoints], dtype=object)
    return {
        category_id: summarize_cgf1(counts.select(categories == category_id))
        for category_id in dict.fromkeys(categories.tolist())
    }
