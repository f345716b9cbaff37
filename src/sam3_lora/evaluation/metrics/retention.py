"""Retention: how much of what the base model finds the adapter still finds.

On concepts outside the dataset (the verified vocabulary concepts the base model finds on an
image), each base detection (score >= the threshold) is *kept* when an adapter detection of the
same prompt overlaps it at mask IoU >= ``KEEP_IOU``. Several base detections may be kept by one
adapter detection: a base that answers an object twice and an adapter that answers it once still
see the same object (the adapter is not asked to repeat the base's duplicates).
``retention`` is the share of base detections kept; ``retention_iou`` the mean, over the
(image, concept) pairs where the base finds something, of the IoU between the union of the base's
masks and the union of the adapter's. The base against itself scores 1 on both; an adapter that
answers nothing scores 0.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

#: Mask IoU at which an adapter detection keeps a base detection.
KEEP_IOU = 0.5


def count_kept(iou: np.ndarray, min_iou: float = KEEP_IOU) -> int:
    """Base detections that some adapter detection overlaps at IoU >= ``min_iou``.

    Args:
        iou: ``[base, adapter]`` mask IoU.
    """
    iou = np.asarray(iou, dtype=float)
    if iou.ndim != 2:
        raise ValueError(f"expected a [base, adapter] IoU matrix, got shape {iou.shape}")
    if not iou.size:
        return 0
    return int((iou.max(axis=1) >= min_iou).sum())


def summarize_retention(pairs: Iterable[tuple[int, int, float]]) -> dict[str, float]:
    """``retention``, ``retention_iou`` and the counts behind them from per-(image, concept)
    ``(base detections, kept, union IoU)``; pairs without base detections are skipped."""
    counted = [(b, k, iou) for b, k, iou in pairs if b > 0]
    detections = sum(b for b, _, _ in counted)
    return {
        "retention": sum(k for _, k, _ in counted) / detections if detections else float("nan"),
        "retention_iou": float(np.mean([iou for *_, iou in counted])) if counted else float("nan"),
        "retention_detections": float(detections),
        "retention_prompts": float(len(counted)),
    }
