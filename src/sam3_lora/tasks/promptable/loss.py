"""The SAM2.1 training loss: Meta's ``MultiStepMultiMasksAndIous`` on plain tensors.

Our implementation of ``training/loss_fns.py`` in Meta's ``sam2`` repository with the settings of
the SAM2.1 fine-tuning config (see docs/TRAINING-FACTS.md and docs/sam2.md). For every prediction
step (the first prompt and each corrective click) and every object, on the M output masks:

- ``focal``: sigmoid focal loss (alpha 0.25, gamma 2), mean over pixels;
- ``dice``: ``1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)`` on sigmoid probabilities;
- the mask kept for both is ``argmin(focal_weight * focal + dice_weight * dice)`` (M > 1);
- ``iou``: ``|predicted IoU - actual IoU|`` (L1; MSE with ``iou_use_l1_loss=False``), actual IoU
  of ``logits > 0`` against the target, averaged over all M masks (``supervise_all_iou``; else
  the kept mask's);
- focal, dice and iou are multiplied by "the target has a pixel" (``target_obj``);
- ``object_score``: BCE of the object-score logit against ``target_obj``.

Each term is summed over objects and steps and divided by ``num_objects`` (at least 1; pass the
mean over processes when distributed, as Meta all-reduces it). The terms returned are weighted;
``loss`` is their sum.

Resolution: as Meta, mask logits are bilinearly upsampled (``align_corners=False``) to the
targets' size (the model input, 1024 px for SAM2), because the targets are the full-resolution
ground truth and small or thin objects lose pixels when the target is downsampled instead.
``mask_loss_resolution`` (ours, default off) trades that for memory: targets are area-averaged to
an ``r x r`` grid (soft edges) and the logits resized to it; the actual IoU then counts target
pixels of at least 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TERMS = ("mask_focal", "mask_dice", "iou", "object_score")


@dataclass
class MaskPrediction:
    """One prediction step of n objects decoded together (their prompts have one length).

    Attributes:
        object_index: long [n], the objects' rows in the batch's targets.
        mask_logits: [n, M, h, w] low-resolution mask logits (M = 3 multimask, else 1).
        iou_scores: [n, M] predicted IoU, already probabilities (transformers' IoU head ends in
            a sigmoid).
        object_score_logits: [n, 1] object-score logits.
        points / labels: the prompt of this step ([n, K, 2], [n, K]), for inspection.
    """

    object_index: Tensor
    mask_logits: Tensor
    iou_scores: Tensor
    object_score_logits: Tensor
    points: Tensor | None = None
    labels: Tensor | None = None

    @property
    def num_masks(self) -> int:
        return self.mask_logits.shape[1]

    def best_mask_logits(self) -> Tensor:
        """[n, h, w]: the mask with the highest predicted IoU (Meta's pick at inference and for
        the next corrective step)."""
        best = self.iou_scores.argmax(dim=1)
        return self.mask_logits[torch.arange(len(best), device=best.device), best]


Step = Sequence[MaskPrediction]


class PromptableLoss(nn.Module):
    """Meta's multi-step, multi-mask SAM2 loss (see the module docstring).

    Args:
        focal_weight / dice_weight / iou_weight / object_score_weight: term weights (Meta's SAM2.1
            config: 20, 1, 1, 1).
        focal_alpha / focal_gamma: the mask focal loss (0.25, 2); a negative alpha weighs
            positives and negatives equally.
        supervise_all_iou: IoU loss on every output mask (True, Meta) or only the kept one.
        iou_use_l1_loss: L1 (True, Meta) or squared error between predicted and actual IoU.
        mask_loss_resolution: side of the grid of the mask terms; None = the targets' size.
    """

    def __init__(
        self,
        focal_weight: float = 20.0,
        dice_weight: float = 1.0,
        iou_weight: float = 1.0,
        object_score_weight: float = 1.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        supervise_all_iou: bool = True,
        iou_use_l1_loss: bool = True,
        mask_loss_resolution: int | None = None,
    ) -> None:
        super().__init__()
        self.weights = {
            "mask_focal": float(focal_weight),
            "mask_dice": float(dice_weight),
            "iou": float(iou_weight),
            "object_score": float(object_score_weight),
        }
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.supervise_all_iou = supervise_all_iou
        self.iou_use_l1_loss = iou_use_l1_loss
        self.mask_loss_resolution = mask_loss_resolution

    def forward(
        self,
        steps: Sequence[Step | MaskPrediction],
        targets: Tensor,
        num_objects: float | Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Sum the weighted terms over steps and objects.

        Args:
            steps: per prediction step, its :class:`MaskPrediction` s (one per prompt length).
            targets: bool or {0, 1} [N, H, W] ground-truth masks of the batch's objects.
            num_objects: the divisor; default N. Clamped to at least 1.

        Returns:
            ``{"loss": total, "mask_focal", "mask_dice", "iou", "object_score"}``: float32
            scalars, each weighted.
        """
        if not steps:
            raise ValueError("PromptableLoss needs at least one prediction step")
        device = targets.device
        divisor = len(targets) if num_objects is None else num_objects
        divisor = torch.as_tensor(divisor, dtype=torch.float32, device=device).clamp(min=1)
        sums = {name: torch.zeros((), dtype=torch.float32, device=device) for name in TERMS}
        for step in steps:
            for prediction in [step] if isinstance(step, MaskPrediction) else step:
                for name, value in self._object_terms(prediction, targets).items():
                    sums[name] = sums[name] + value.sum()
        terms = {name: self.weights[name] * sums[name] / divisor for name in TERMS}
        return {"loss": sum(terms.values()), **terms}

    def _object_terms(self, prediction: MaskPrediction, targets: Tensor) -> dict[str, Tensor]:
        """Unweighted per-object terms [n] of one prediction."""
        target = targets[prediction.object_index.to(targets.device)]  # [n, H, W]
        present = target.flatten(1).any(1).float()  # target_obj
        size = tuple(target.shape[-2:])
        if self.mask_loss_resolution is not None:
            size = (self.mask_loss_resolution, self.mask_loss_resolution)
        target = _resize_targets(target.float(), size)[:, None]  # [n, 1, H, W]
        logits = _resize_logits(prediction.mask_logits.float(), size)  # [n, M, H, W]
        target = target.expand_as(logits)

        focal = self._focal(logits, target).flatten(2).mean(-1)  # [n, M]
        probability = logits.sigmoid()
        dice = 1 - (2 * (probability * target).flatten(2).sum(-1) + 1) / (
            probability.flatten(2).sum(-1) + target.flatten(2).sum(-1) + 1
        )
        predicted, actual = logits.flatten(2) > 0, target.flatten(2) >= 0.5
        overlap = (predicted & actual).sum(-1).float()
        union = (predicted | actual).sum(-1).float().clamp(min=1)
        error = prediction.iou_scores.float() - overlap / union
        iou = error.abs() if self.iou_use_l1_loss else error.square()  # [n, M]

        if logits.shape[1] > 1:
            combined = self.weights["mask_focal"] * focal + self.weights["mask_dice"] * dice
            best = combined.argmin(dim=1, keepdim=True)
            focal, dice = focal.gather(1, best), dice.gather(1, best)
            iou = iou.mean(1, keepdim=True) if self.supervise_all_iou else iou.gather(1, best)
        object_score = F.binary_cross_entropy_with_logits(
            prediction.object_score_logits.float().reshape(-1), present, reduction="none"
        )
        return {
            "mask_focal": focal[:, 0] * present,
            "mask_dice": dice[:, 0] * present,
            "iou": iou[:, 0] * present,
            "object_score": object_score,
        }

    def _focal(self, logits: Tensor, target: Tensor) -> Tensor:
        probability = logits.sigmoid()
        ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        p_t = probability * target + (1 - probability) * (1 - target)
        loss = ce * (1 - p_t) ** self.focal_gamma
        if self.focal_alpha >= 0:
            loss = (self.focal_alpha * target + (1 - self.focal_alpha) * (1 - target)) * loss
        return loss


def _resize_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """[n, M, h, w] logits bilinearly resized to ``size`` (align_corners=False, as Meta)."""
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _resize_targets(target: Tensor, size: tuple[int, int]) -> Tensor:
    """[n, H, W] {0, 1} targets area-averaged to ``size`` (a no-op at their own size)."""
    if tuple(target.shape[-2:]) == size:
        return target
    return F.interpolate(target[:, None], size=size, mode="area")[:, 0]
