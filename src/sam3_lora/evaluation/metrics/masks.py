"""IoU and Dice of binary masks.

Convention for empty masks: when prediction and ground truth are **both empty** the prompt is
answered perfectly, so IoU and Dice are 1.0. This is the gIoU convention of generalized referring
segmentation (gRefCOCO / GRES: a correctly rejected "no-target" sample scores IoU 1), and it makes
a prompt for an absent concept count as correct when the model predicts nothing. A non-empty
prediction on an empty ground truth (or the reverse) scores 0.0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def _check_same_shape(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"mask shapes differ: prediction {pred.shape} vs ground truth {gt.shape}")


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of two boolean masks of the same shape (1.0 if both are empty)."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    _check_same_shape(pred, gt)
    union = np.logical_or(pred, gt).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, gt).sum() / union)


def mask_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient 2|A∩B| / (|A| + |B|) of two boolean masks (1.0 if both are empty)."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    _check_same_shape(pred, gt)
    total = pred.sum() + gt.sum()
    if total == 0:
        return 1.0
    return float(2 * np.logical_and(pred, gt).sum() / total)


def union_iou_dice(pred_masks: np.ndarray, gt_masks: np.ndarray) -> tuple[float, float]:
    """IoU and Dice of one image-prompt: union of the predicted masks vs union of the ground truth.

    Args:
        pred_masks: ``[N, H, W]`` bool, the prompt's predicted instances (N may be 0).
        gt_masks: ``[M, H, W]`` bool, its ground-truth instances (M may be 0).

    Returns:
        ``(iou, dice)``; both 1.0 when both unions are empty (see the module docstring).
    """
    pred_masks, gt_masks = np.asarray(pred_masks, dtype=bool), np.asarray(gt_masks, dtype=bool)
    if pred_masks.ndim != 3 or gt_masks.ndim != 3 or pred_masks.shape[1:] != gt_masks.shape[1:]:
        raise ValueError(
            f"expected [N, H, W] and [M, H, W] masks, got {pred_masks.shape} and {gt_masks.shape}"
        )
    pred_union, gt_union = pred_masks.any(axis=0), gt_masks.any(axis=0)
    return mask_iou(pred_union, gt_union), mask_dice(pred_union, gt_union)


def union_iou_dice_torch(
    pred_union: torch.Tensor, gt_union: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-prompt IoU and Dice of batched mask unions, on their device (no gradient).

    Args:
        pred_union: ``[P, H, W]`` union of each prompt's predicted masks; nonzero is foreground.
        gt_union: ``[P, H, W]`` union of each prompt's ground-truth masks.

    Returns:
        ``(iou, dice)``, each a float32 ``[P]`` tensor; 1.0 where both unions are empty.
    """
    if pred_union.shape != gt_union.shape or pred_union.ndim != 3:
        raise ValueError(
            f"expected two [P, H, W] tensors, got {tuple(pred_union.shape)} and "
            f"{tuple(gt_union.shape)}"
        )
    pred = pred_union.detach().flatten(1) != 0
    gt = gt_union.detach().flatten(1) != 0
    inter = (pred & gt).sum(dim=1)
    total = pred.sum(dim=1) + gt.sum(dim=1)
    union = total - inter
    iou = (inter / union.clamp_min(1)).float().masked_fill(union == 0, 1.0)
    dice = (2 * inter / total.clamp_min(1)).float().masked_fill(total == 0, 1.0)
    return iou, dice
