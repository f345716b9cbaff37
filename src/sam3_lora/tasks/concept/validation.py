"""Training validation of the concept task: per-prompt statistics and their ``val/*`` summary.

Names come from :mod:`sam3_lora.evaluation.vocabulary`, shared with ``sam3-lora evaluate``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sam3_lora.evaluation.metrics.retention import count_kept, summarize_retention
from sam3_lora.tasks.concept.loss import ConceptOutputs
from sam3_lora.tasks.concept.samples import NEGATIVE_PROMPT_ID, ConceptBatch


def binary_masks(logits: Tensor, size: torch.Size | tuple[int, int], threshold: float) -> Tensor:
    """Mask logits [K, h, w] bilinearly upsampled to ``size`` and thresholded: bool [K, H, W]."""
    upsampled = torch.nn.functional.interpolate(
        logits.float()[None], size=size, mode="bilinear", align_corners=False
    )[0]
    return upsampled.sigmoid() >= threshold


@torch.no_grad()
def prompt_statistics(
    outputs: ConceptOutputs,
    batch: ConceptBatch,
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
) -> dict[str, Tensor]:
    """Per-prompt statistics of one validation batch.

    Returns tensors of length B: ``iou`` / ``dice`` of the union of predicted masks (queries with
    score >= ``score_threshold``) against the union of target masks, ``top1_iou`` (the best
    instance IoU of the highest-scoring query's mask: threshold-free), ``has_target``,
    ``is_negative`` (a hard-negative prompt), ``fires`` (any query above threshold) and
    ``presence_correct``.
    """
    scores = outputs.logits[-1].sigmoid() * outputs.presence_logits[-1].sigmoid()
    keep = scores >= score_threshold  # [B, Q]
    size = batch.pixel_values.shape[-2:]
    device = keep.device
    # Upsample only the kept queries' masks: all Q at 1008 px would not fit in memory.
    predicted = torch.zeros((len(keep), *size), dtype=torch.bool, device=device)
    for prompt, kept in enumerate(keep):
        if kept.any():
            predicted[prompt] = binary_masks(outputs.masks[prompt, kept], size, mask_threshold).any(
                0
            )
    target = torch.stack(
        [
            m.any(dim=0) if len(m) else torch.zeros(size, dtype=torch.bool, device=m.device)
            for m in batch.target_masks
        ]
    )
    intersection = (predicted & target).flatten(1).sum(1).float()
    union = (predicted | target).flatten(1).sum(1).float()
    areas = predicted.flatten(1).sum(1).float() + target.flatten(1).sum(1).float()
    has_target = torch.tensor([len(b) > 0 for b in batch.target_boxes], device=device)
    presence = outputs.presence_logits[-1].squeeze(-1) > 0
    top1_iou = torch.zeros(len(keep), device=device)
    for prompt, instances in enumerate(batch.target_masks):
        if len(instances):
            best = outputs.masks[prompt, scores[prompt].argmax()][None]
            mask = binary_masks(best, size, mask_threshold)[0]
            overlap = (instances & mask).flatten(1).sum(1).float()
            joint = (instances | mask).flatten(1).sum(1).float().clamp(min=1)
            top1_iou[prompt] = (overlap / joint).max()
    return {
        "top1_iou": top1_iou,
        "iou": torch.where(union > 0, intersection / union.clamp(min=1), 1.0),
        "dice": torch.where(areas > 0, 2 * intersection / areas.clamp(min=1), 1.0),
        "has_target": has_target,
        "is_negative": torch.tensor(
            [c == NEGATIVE_PROMPT_ID for c in batch.prompt_category_ids], device=device
        ),
        "fires": keep.any(dim=1),
        "presence_correct": presence == has_target,
    }


#: Keys of the per-retention-prompt statistics (their own length, not the prompts').
RETENTION_KEYS = ("retention/base", "retention/kept", "retention/iou")


@torch.no_grad()
def retention_statistics(
    base: ConceptOutputs,
    adapted: ConceptOutputs,
    size: torch.Size | tuple[int, int],
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
) -> dict[str, Tensor]:
    """Per retention prompt (the same R prompts in ``base`` and ``adapted``): the base's
    detections (score >= ``score_threshold``, empty masks left out), how many the adapter keeps
    (one of its own detections overlaps it at mask IoU >= 0.5) and the IoU of the two unions of
    masks, at ``size``.

    Returns:
        ``retention/base``, ``retention/kept``, ``retention/iou``: float tensors [R].
    """
    counts, kept, ious = [], [], []
    for prompt in range(base.logits.shape[1]):
        masks = []
        for outputs in (base, adapted):
            logits, presence = outputs.logits[-1, prompt], outputs.presence_logits[-1, prompt]
            scores = logits.float().sigmoid() * presence.float().sigmoid()  # [Q]
            order = torch.argsort(scores, descending=True)
            order = order[scores[order] >= score_threshold]
            found = torch.zeros((0, *size), dtype=torch.bool, device=scores.device)
            if len(order):
                found = binary_masks(outputs.masks[prompt, order], size, mask_threshold)
            masks.append(found[found.flatten(1).any(1)])  # an empty mask has nothing to keep
        base_masks, adapted_masks = (m.flatten(1).float() for m in masks)
        overlap = base_masks @ adapted_masks.T
        union = base_masks.sum(1)[:, None] + adapted_masks.sum(1)[None, :] - overlap
        iou = (overlap / union.clamp(min=1)).cpu().numpy()
        counts.append(float(len(base_masks)))
        kept.append(float(count_kept(iou)))
        base_union, adapted_union = (m.any(0) for m in masks)
        joint = (base_union | adapted_union).sum()
        ious.append(float((base_union & adapted_union).sum() / joint) if joint else 1.0)
    return {
        key: torch.tensor(values, dtype=torch.float32)
        for key, values in zip(RETENTION_KEYS, (counts, kept, ious), strict=True)
    }


def summarize_validation(steps: list[dict[str, Tensor]]) -> dict[str, float]:
    """Aggregate :func:`prompt_statistics` (plus ``loss/<term>`` entries) into ``val/*``.

    ``miou`` / ``dice`` / ``recall_prompts`` / ``top1_iou`` average the prompts with targets;
    ``absent_fire_rate`` the dataset categories without targets, ``negative_fire_rate`` the
    hard negatives; ``giou`` all prompts; ``retention`` / ``retention_iou`` the retention
    prompts (:func:`retention_statistics`), when the base model found something on them.
    """
    if not steps:
        return {}
    merged = {key: torch.cat([s[key].reshape(-1).float().cpu() for s in steps]) for key in steps[0]}
    retention = {key: merged.pop(key) for key in RETENTION_KEYS if key in merged}
    has_target = merged["has_target"].bool()
    negative = merged["is_negative"].bool()
    absent = ~has_target & ~negative
    metrics = {}
    for key, value in merged.items():
        if key.startswith("loss/"):
            term = key.removeprefix("loss/")
            metrics["val/loss" if term == "loss" else f"val/loss_{term}"] = value.mean().item()
    if has_target.any():
        metrics["val/miou"] = merged["iou"][has_target].mean().item()
        metrics["val/dice"] = merged["dice"][has_target].mean().item()
        metrics["val/recall_prompts"] = merged["fires"][has_target].mean().item()
        metrics["val/top1_iou"] = merged["top1_iou"][has_target].mean().item()
    if absent.any():
        metrics["val/absent_fire_rate"] = merged["fires"][absent].mean().item()
    if negative.any():
        metrics["val/negative_fire_rate"] = merged["fires"][negative].mean().item()
    metrics["val/giou"] = merged["iou"].mean().item()
    metrics["val/presence_accuracy"] = merged["presence_correct"].mean().item()
    metrics["val/prompts"] = float(len(has_target))
    if retention and len(retention["retention/base"]):
        summary = summarize_retention(
            zip(*(retention[key].tolist() for key in RETENTION_KEYS), strict=True)
        )
        if summary["retention_detections"]:
            metrics["val/retention"] = summary["retention"]
            metrics["val/retention_iou"] = summary["retention_iou"]
    return metrics
