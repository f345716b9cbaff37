"""Validation of the promptable task: per-object IoU and Dice, and their summary.

The predicted mask of an object is the final step's mask with the highest predicted IoU (what
the predictor returns), bilinearly upsampled to the target resolution and thresholded at logit
0 (probability 0.5). Prompts are the deterministic evaluation prompts (box without noise, or the
centre-most click), so runs and checkpoints compare on the same inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from sam3_lora.tasks.promptable.loss import MaskPrediction, PromptableLoss
from sam3_lora.tasks.promptable.module import PromptableModel, PromptableOutputs
from sam3_lora.tasks.promptable.samples import PromptBatch


def mask_logit_threshold(probability: float) -> float:
    """The mask-logit cut of a probability threshold (0.5 -> logit 0)."""
    if probability <= 0:
        return -math.inf
    if probability >= 1:
        return math.inf
    return math.log(probability / (1 - probability))


def object_metrics(
    predictions: Sequence[MaskPrediction], targets: Tensor, mask_threshold: float = 0.5
) -> dict[str, Tensor]:
    """IoU and Dice of every object's predicted mask against its target.

    Args:
        predictions: one step's predictions, covering the N objects.
        targets: bool [N, H, W].
        mask_threshold: a pixel is predicted when its probability exceeds this.

    Returns:
        ``{"iou": [N], "dice": [N]}`` float32, in object order; 1 where prediction and target
        are both empty.
    """
    iou = torch.zeros(len(targets), device=targets.device)
    dice = torch.zeros(len(targets), device=targets.device)
    size = tuple(targets.shape[-2:])
    cut = mask_logit_threshold(mask_threshold)
    for prediction in predictions:
        logits = prediction.best_mask_logits().float()[:, None]
        if tuple(logits.shape[-2:]) != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        predicted = logits[:, 0] > cut
        target = targets[prediction.object_index]
        overlap = (predicted & target).flatten(1).sum(1).float()
        union = (predicted | target).flatten(1).sum(1).float()
        areas = predicted.flatten(1).sum(1).float() + target.flatten(1).sum(1).float()
        iou[prediction.object_index] = torch.where(union > 0, overlap / union.clamp(min=1), 1.0)
        dice[prediction.object_index] = torch.where(
            areas > 0, 2 * overlap / areas.clamp(min=1), 1.0
        )
    return {"iou": iou, "dice": dice}


@torch.no_grad()
def validation_step(
    model: PromptableModel,
    loss: PromptableLoss,
    batch: PromptBatch,
    prompt: str | None = None,
    correction_clicks: int | None = None,
) -> dict[str, Tensor]:
    """Per-object metrics and the loss terms of one batch, with evaluation prompts, in eval
    mode (restored afterwards).

    Args:
        model: the task module (its ``eval_prompt`` / ``eval_correction_clicks`` by default).
        loss: the training loss, computed on the evaluation steps.
        batch: a validation batch.
        prompt / correction_clicks: override the module's evaluation prompt.

    Returns:
        ``iou`` / ``dice`` / ``category_ids`` per object [N], ``prompts`` [1] (objects), and
        ``loss/<term>`` [1] for the total and every weighted term.
    """
    was_training = model.training
    model.eval()  # evaluation prompts, no object-score gating, transformers' inference heads
    try:
        outputs = model(batch, prompt=prompt, correction_clicks=correction_clicks)
    finally:
        model.train(was_training)
    return outputs_statistics(outputs, batch, loss)


def outputs_statistics(
    outputs: PromptableOutputs,
    batch: PromptBatch,
    loss: PromptableLoss,
    mask_threshold: float = 0.5,
    prefix: str = "",
) -> dict[str, Tensor]:
    """:func:`validation_step`'s record of outputs already computed (``prefix`` before
    ``iou`` / ``dice``; the loss terms only without a prefix)."""
    device = batch.target_masks.device
    record = {"category_ids": batch.category_ids} if not prefix else {}
    if not prefix:
        record["prompts"] = torch.tensor([float(batch.num_objects)], device=device)
    if not outputs.steps:
        empty = torch.zeros(0, device=device)
        return {**record, f"{prefix}iou": empty, f"{prefix}dice": empty}
    metrics = object_metrics(outputs.final(), batch.target_masks, mask_threshold)
    record.update({f"{prefix}{name}": value for name, value in metrics.items()})
    if not prefix:
        losses = loss(outputs.steps, batch.target_masks)
        record.update({f"loss/{name}": v.detach().reshape(1) for name, v in losses.items()})
    return record


def summarize(records: Sequence[dict[str, Tensor]], prefix: str = "val/") -> dict[str, float]:
    """Aggregate :func:`validation_step` records into metrics.

    Returns:
        ``{prefix}miou`` and ``{prefix}dice`` (means over objects; ``point_iou`` / ``point_dice``
        records give ``point_miou`` / ``point_dice``), ``{prefix}loss`` and
        ``{prefix}loss_<term>`` (batch losses weighted by their object counts, i.e. per-object
        means) and ``{prefix}prompts`` (objects). Empty when there was no object.
    """
    iou = torch.cat([r["iou"].reshape(-1).float().cpu() for r in records]) if records else None
    if iou is None or not len(iou):
        return {}
    metrics = {}
    for key in records[0]:
        if not key.startswith("loss/") and (key == "iou" or key.endswith(("_iou", "dice"))):
            values = torch.cat([r[key].reshape(-1).float().cpu() for r in records])
            name = key[: -len("iou")] + "miou" if key.endswith("iou") else key
            metrics[f"{prefix}{name}"] = values.mean().item()
    scored = [r for r in records if "loss/loss" in r]
    weights = torch.tensor([r["prompts"].sum().item() for r in scored])
    for key in scored[0]:
        if key.startswith("loss/"):
            values = torch.cat([r[key].reshape(-1).float().cpu() for r in scored])
            name = "loss" if key == "loss/loss" else "loss_" + key.removeprefix("loss/")
            metrics[f"{prefix}{name}"] = (values * weights).sum().item() / weights.sum().item()
    metrics[f"{prefix}prompts"] = float(len(iou))
    return metrics
