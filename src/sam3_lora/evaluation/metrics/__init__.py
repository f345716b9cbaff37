"""Evaluation metrics: mask IoU / Dice, COCO AP (pycocotools) and SAM3's cgF1.

- :mod:`.masks`: IoU and Dice of binary masks (numpy, and a batched torch version for training).
- :mod:`.coco`: COCO AP / AR through pycocotools' ``COCOeval``, with per-category AP.
- :mod:`.cgf1`: SAM3's cgF1 over (image, prompt) datapoints, after Meta's ``cgf1_eval.py``.
"""

from __future__ import annotations

from sam3_lora.evaluation.metrics.cgf1 import (
    IOU_THRESHOLDS,
    DatapointCounts,
    cgf1_metrics,
    cgf1_per_category,
    count_datapoints,
    summarize_cgf1,
)
from sam3_lora.evaluation.metrics.coco import (
    COCO_STAT_NAMES,
    coco_detection_metrics,
    segmentation_to_rle,
)
from sam3_lora.evaluation.metrics.masks import (
    mask_dice,
    mask_iou,
    union_iou_dice,
    union_iou_dice_torch,
)

__all__ = [
    "COCO_STAT_NAMES",
    "IOU_THRESHOLDS",
    "DatapointCounts",
    "cgf1_metrics",
    "cgf1_per_category",
    "coco_detection_metrics",
    "count_datapoints",
    "mask_dice",
    "mask_iou",
    "segmentation_to_rle",
    "summarize_cgf1",
    "union_iou_dice",
    "union_iou_dice_torch",
]
