"""SAM3's concept-segmentation training loss, with the semantics of Meta's training code.

Our own implementation of what ``sam3/train/loss/loss_fns.py`` (``IABCEMdetr``, ``Boxes``,
``Masks``, ``SemanticSegCriterion``) and ``sam3/train/loss/sam3_loss.py`` (``Sam3LossWrapper``)
compute for an image batch; see docs/training.md. B is the number of (image, prompt) pairs,
Q the queries per prompt, N the number of target boxes used for normalisation.

On every decoder layer (each matched on its own outputs with :func:`match_queries`):

- ``class``: IoU-aware BCE. A matched query has the soft target
  ``max(p^alpha * IoU^(1 - alpha), 0.01)`` (detached) and weight ``iou_aware_pos_weight``; an
  unmatched one has target 0 and weight ``p^gamma``. Prompts without targets get none of it.
  Normalised by ``B * max(Q, 200)``.
- ``presence``: ``0.5 * BCE(presence_logit, prompt has targets)`` averaged over the B prompts.
- ``box_l1`` (cxcywh, 4 coordinates summed) and ``giou`` (``1 - GIoU``): summed over matched pairs,
  divided by N.

On the final layer only (when ``LossWeights.masks``):

- ``mask_focal`` (mean over pixels) and ``mask_dice`` (+1 smoothing) of the matched queries'
  masks, summed over matched pairs and divided by N.
- ``semantic_focal`` / ``semantic_dice`` on the semantic-segmentation logits, target = union of
  the prompt's instance masks, averaged over the prompts whose union is not empty.

The total is ``sqrt(B) * sum of the weighted terms`` (``batch_scale``).

Deviations from Meta, by design:

- Meta also trains a one-to-many head (duplicated queries, greedy matcher); ``transformers``'
  ``Sam3Model`` has none, so there is no such term.
- "Prompt has targets" is ``N_b > 0``; Meta counts only boxes with width and height > 0. Our data
  pipeline drops zero-area objects, so the two agree on its output.
- ``mask_loss_resolution`` (ours, default off) computes the mask and semantic terms on an
  ``r x r`` grid with area-downsampled (soft) targets instead of upsampling predictions to the
  target size, to save memory at 1008 px.
- The semantic terms divide by ``max(#valid prompts, 1)`` where Meta adds 1e-6.
- Zero-size boxes: GIoU and IoU carry an eps of 1e-7 (torchvision's paired GIoU loss) and the
  matcher counts an undefined GIoU as 0, where Meta's would give NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou_loss, sigmoid_focal_loss

from sam3_lora.errors import ConfigError
from sam3_lora.tasks.concept.matcher import match_queries, match_queries_numpy

__all__ = [
    "ConceptOutputs",
    "LossWeights",
    "PromptTarget",
    "Sam3ConceptLoss",
    "dice_loss",
    "match_queries",
]

# Meta's ``pad_n_queries``: the classification loss is normalised as if there were at least this
# many queries per prompt, so models with fewer queries keep the released model's loss scale.
PAD_NUM_QUERIES = 200
# Presence is a focal loss with alpha 0.5 and gamma 0, i.e. 0.5 * BCE.
PRESENCE_ALPHA = 0.5
PRESENCE_GAMMA = 0.0
# Floor of the IoU-aware soft target of a matched query.
MIN_SOFT_TARGET = 0.01
# Target masks resized per chunk of this many (``mask_loss_resolution``).
_RESIZE_CHUNK = 16

TERMS = (
    "class",
    "presence",
    "box_l1",
    "giou",
    "mask_focal",
    "mask_dice",
    "semantic_focal",
    "semantic_dice",
)


@dataclass
class LossWeights:
    """Weights and hyper-parameters of :class:`Sam3ConceptLoss`; mirrored by the ``loss:`` config.

    Defaults are Meta's (roboflow fine-tuning config, segmentation variant).
    """

    masks: bool = True
    """Mask and semantic-segmentation terms; False = Meta's detection-only recipe."""
    class_weight: float = 20.0
    """IoU-aware classification, every decoder layer."""
    presence_weight: float = 20.0
    """Presence (0.5 * BCE), every decoder layer."""
    box_l1_weight: float = 5.0
    """L1 on cxcywh boxes, every decoder layer."""
    giou_weight: float = 2.0
    """1 - GIoU, every decoder layer."""
    mask_focal_weight: float = 200.0
    """Sigmoid focal loss of matched masks, final layer."""
    mask_dice_weight: float = 10.0
    """Dice loss of matched masks, final layer."""
    semantic_focal_weight: float = 20.0
    """Sigmoid focal loss of the semantic-segmentation logits."""
    semantic_dice_weight: float = 30.0
    """Dice loss of the semantic-segmentation logits."""
    matcher_class_cost: float = 2.0
    """Hungarian matching: weight of the focal classification cost."""
    matcher_box_cost: float = 5.0
    """Hungarian matching: weight of the L1 box cost."""
    matcher_giou_cost: float = 2.0
    """Hungarian matching: weight of the GIoU cost."""
    focal_alpha: float = 0.25
    """Alpha of the matching cost, the mask focal loss and the IoU-aware target p^alpha."""
    focal_gamma: float = 2.0
    """Gamma of the matching cost, the mask / semantic focal losses and the negatives' p^gamma."""
    semantic_focal_alpha: float = 0.6
    """Alpha of the semantic-segmentation focal loss."""
    iou_aware_pos_weight: float = 10.0
    """BCE weight of matched queries in the classification loss."""
    aux_layers: bool = True
    """Box, classification and presence terms on every decoder layer; False = final layer only."""
    batch_scale: bool = True
    """Multiply the total by sqrt(B), B = number of (image, prompt) pairs."""
    mask_loss_resolution: int | None = None
    """Side of the square grid of the mask and semantic terms; None = the targets' size (Meta)."""


@dataclass
class ConceptOutputs:
    """Model outputs the loss needs, for B (image, prompt) pairs and Q queries.

    Attributes:
        logits: [L, B, Q] raw query logits per decoder layer ([B, Q] = one layer).
        boxes: [L, B, Q, 4] boxes, cxcywh normalised ([B, Q, 4] = one layer).
        presence_logits: [L, B, 1] presence logits ([B, 1] = one layer).
        masks: [B, Q, h, w] final-layer mask logits, or None (detection only).
        semantic_logits: [B, 1, h, w] semantic-segmentation logits, or None.
    """

    logits: Tensor
    boxes: Tensor
    presence_logits: Tensor
    masks: Tensor | None = None
    semantic_logits: Tensor | None = None


@dataclass
class PromptTarget:
    """Ground truth of one (image, prompt) pair.

    Attributes:
        boxes: [N, 4] cxcywh boxes normalised by the (padded) image size; N may be 0.
        masks: [N, H, W] bool / uint8 instance masks at the model input resolution, or None.
    """

    boxes: Tensor
    masks: Tensor | None = None


def dice_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Dice loss with +1 smoothing, one value per row.

    Args:
        logits: [M, P] mask logits (P pixels).
        targets: [M, P] targets in [0, 1].

    Returns:
        [M] ``1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)``, ``p = sigmoid(logits)``.
    """
    prob = logits.sigmoid()
    numerator = 2 * (prob * targets).sum(-1) + 1
    denominator = prob.sum(-1) + targets.sum(-1) + 1
    return 1 - numerator / denominator


def _paired_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """IoU of row i of ``boxes1`` with row i of ``boxes2`` (torchvision only has all pairs).

    Args:
        boxes1: [M, 4] xyxy boxes.
        boxes2: [M, 4] xyxy boxes.

    Returns:
        [M] IoU; 0 for two zero-area boxes.
    """
    top_left = torch.max(boxes1[:, :2], boxes2[:, :2])
    bottom_right = torch.min(boxes1[:, 2:], boxes2[:, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    area1 = (boxes1[:, 2:] - boxes1[:, :2]).clamp(min=0).prod(-1)
    area2 = (boxes2[:, 2:] - boxes2[:, :2]).clamp(min=0).prod(-1)
    return inter / (area1 + area2 - inter + eps)


def _upsample_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly resize [M, h, w] logits to ``size`` (align_corners=False, as Meta)."""
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def _targets_on_grid(masks: Tensor, size: tuple[int, int], dtype: torch.dtype) -> Tensor:
    """Binary [M, H, W] masks as ``dtype`` on a ``size`` grid (area average: soft at edges).

    Resized a few masks at a time, so that full-resolution float copies of all M masks never
    exist at once.
    """
    if tuple(masks.shape[-2:]) == size:
        return masks.to(dtype)
    return torch.cat(
        [
            F.interpolate(chunk[:, None].to(dtype), size=size, mode="area")[:, 0]
            for chunk in masks.split(_RESIZE_CHUNK)
        ]
    )


def _loss_dtype(tensor: Tensor) -> torch.dtype:
    """float32, or the tensor's dtype when it is more precise (masks losses in bf16 are lossy)."""
    return torch.promote_types(tensor.dtype, torch.float32)


class Sam3ConceptLoss(nn.Module):
    """SAM3 concept-segmentation loss (Meta's semantics; see the module docstring).

    Args:
        weights: term weights and hyper-parameters; None = Meta's defaults.
    """

    def __init__(self, weights: LossWeights | None = None) -> None:
        super().__init__()
        self.weights = weights if weights is not None else LossWeights()

    def forward(
        self,
        outputs: ConceptOutputs,
        targets: list[PromptTarget],
        num_boxes: float | Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Compute every weighted term and the total.

        Args:
            outputs: model outputs for B (image, prompt) pairs.
            targets: B prompt targets, in the order of ``outputs``.
            num_boxes: N, the box count that divides the box and mask terms (pass the
                cross-process mean when distributed); default = target boxes in this batch.
                Clamped to at least 1.

        Returns:
            ``{"loss": total, "class", "presence", "box_l1", "giou", "mask_focal", "mask_dice",
            "semantic_focal", "semantic_dice"}``: scalar tensors, each term weighted and summed
            over the decoder layers used; ``loss = sqrt(B) * sum of terms`` (or the plain sum
            without ``batch_scale``). Terms that are switched off are zero.
        """
        w = self.weights
        if not targets:
            raise ValueError("Sam3ConceptLoss needs at least one (image, prompt) target")
        logits, boxes, presence = _layered(outputs, len(targets))
        num_layers, batch = logits.shape[:2]
        device, dtype = logits.device, _loss_dtype(logits)
        sizes = [len(t.boxes) for t in targets]
        if num_boxes is None:
            num_boxes = float(sum(sizes))
        num_boxes = torch.as_tensor(num_boxes, dtype=dtype, device=device).clamp(min=1)
        has_target = torch.tensor([n > 0 for n in sizes], device=device)
        all_boxes = torch.cat([t.boxes.reshape(-1, 4) for t in targets]).to(device, dtype)
        offsets = np.cumsum([0, *sizes[:-1]])

        terms = {name: torch.zeros((), dtype=dtype, device=device) for name in TERMS}
        layers = range(num_layers) if w.aux_layers else [num_layers - 1]
        for layer in layers:  # the final layer comes last: ``matches`` ends up being its own
            matches = self._match(logits[layer], boxes[layer], targets)
            # (prompt, query, index into the concatenated targets) of each matched pair: [3, M].
            flat = np.concatenate(
                [
                    np.stack([np.full_like(q, b), q, t + offsets[b]])
                    for b, (q, t) in enumerate(matches)
                ],
                axis=1,
            )
            layer_terms = self._layer_terms(
                logits[layer],
                boxes[layer],
                presence[layer],
                all_boxes,
                torch.from_numpy(flat).to(device),
                has_target,
                num_boxes,
            )
            for name, value in layer_terms.items():
                terms[name] = terms[name] + value

        if w.masks and (w.mask_focal_weight or w.mask_dice_weight):
            if outputs.masks is None:
                raise ConfigError(
                    "loss.masks is true but the model returned no mask logits; "
                    "set `loss.masks: false` for the detection-only recipe"
                )
            focal, dice = self._mask_terms(outputs.masks, targets, matches)
            terms["mask_focal"] = w.mask_focal_weight * focal / num_boxes
            terms["mask_dice"] = w.mask_dice_weight * dice / num_boxes
        if w.masks and (w.semantic_focal_weight or w.semantic_dice_weight):
            if outputs.semantic_logits is None:
                raise ConfigError(
                    "loss.masks is true but the model returned no semantic-segmentation logits; "
                    "set `loss.semantic_focal_weight: 0` and `loss.semantic_dice_weight: 0`, or "
                    "`loss.masks: false` for the detection-only recipe"
                )
            focal, dice = self._semantic_terms(outputs.semantic_logits, targets)
            terms["semantic_focal"] = w.semantic_focal_weight * focal
            terms["semantic_dice"] = w.semantic_dice_weight * dice

        total = sum(terms.values())
        if w.batch_scale:
            total = total * math.sqrt(batch)
        return {"loss": total, **terms}

    def _match(
        self, logits: Tensor, boxes: Tensor, targets: list[PromptTarget]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Match one layer: a (query_idx, target_idx) pair of arrays per prompt."""
        w = self.weights
        return match_queries_numpy(
            logits,
            boxes,
            targets,
            class_cost=w.matcher_class_cost,
            box_cost=w.matcher_box_cost,
            giou_cost=w.matcher_giou_cost,
            focal_alpha=w.focal_alpha,
            focal_gamma=w.focal_gamma,
        )

    def _layer_terms(
        self,
        logits: Tensor,
        boxes: Tensor,
        presence: Tensor,
        all_boxes: Tensor,
        matched: Tensor,
        has_target: Tensor,
        num_boxes: Tensor,
    ) -> dict[str, Tensor]:
        """Weighted class, presence, box L1 and GIoU terms of one decoder layer.

        Args:
            logits: [B, Q] raw query logits.
            boxes: [B, Q, 4] cxcywh boxes.
            presence: [B] presence logits.
            all_boxes: [T, 4] cxcywh target boxes of all prompts, concatenated.
            matched: [3, M] (prompt, query, index into ``all_boxes``) of the M matched pairs.
            has_target: [B] bool, the prompt has at least one target.
            num_boxes: N, scalar tensor.

        Returns:
            The four weighted terms.
        """
        w = self.weights
        batch, num_queries = logits.shape
        batch_idx, query_idx, target_idx = matched
        pred_boxes = boxes[batch_idx, query_idx].to(all_boxes.dtype)  # [M, 4]
        target_boxes = all_boxes[target_idx]  # [M, 4]
        pred_xyxy = box_convert(pred_boxes, "cxcywh", "xyxy")
        target_xyxy = box_convert(target_boxes, "cxcywh", "xyxy")

        logits = logits.to(all_boxes.dtype)
        prob = logits.sigmoid()
        is_matched = torch.zeros_like(logits, dtype=torch.bool)
        is_matched[batch_idx, query_idx] = True
        with torch.no_grad():
            iou = _paired_box_iou(pred_xyxy, target_xyxy)
            soft_target = prob[batch_idx, query_idx] ** w.focal_alpha * iou ** (1 - w.focal_alpha)
            soft_target = soft_target.clamp(min=MIN_SOFT_TARGET)
        positives = F.binary_cross_entropy_with_logits(
            logits[batch_idx, query_idx], soft_target, reduction="sum"
        )
        negatives = prob**w.focal_gamma * F.binary_cross_entropy_with_logits(
            logits, torch.zeros_like(logits), reduction="none"
        )
        negatives = negatives[~is_matched & has_target[:, None]].sum()
        class_loss = (w.iou_aware_pos_weight * positives + negatives) / (
            batch * max(num_queries, PAD_NUM_QUERIES)
        )

        presence_loss = sigmoid_focal_loss(
            presence.to(all_boxes.dtype),
            has_target.to(all_boxes.dtype),
            alpha=PRESENCE_ALPHA,
            gamma=PRESENCE_GAMMA,
            reduction="sum",
        )
        box_l1 = F.l1_loss(pred_boxes, target_boxes, reduction="sum")
        # torchvision's paired GIoU loss has an eps: a zero-size box gives no NaN.
        giou = generalized_box_iou_loss(pred_xyxy, target_xyxy, reduction="sum")
        return {
            "class": w.class_weight * class_loss,
            "presence": w.presence_weight * presence_loss / batch,
            "box_l1": w.box_l1_weight * box_l1 / num_boxes,
            "giou": w.giou_weight * giou / num_boxes,
        }

    def _target_size(self, target_size: tuple[int, int]) -> tuple[int, int]:
        """Grid of the mask terms: the targets' size, or ``mask_loss_resolution`` squared."""
        side = self.weights.mask_loss_resolution
        return target_size if side is None else (side, side)

    def _mask_terms(
        self,
        masks: Tensor,
        targets: list[PromptTarget],
        matches: list[tuple[np.ndarray, np.ndarray]],
    ) -> tuple[Tensor, Tensor]:
        """Unnormalised mask focal and dice losses of the final layer's matched pairs.

        Only matched queries' masks are resized. Matched pairs whose prompt has no target masks
        are skipped (they still count in N).

        Args:
            masks: [B, Q, h, w] mask logits.
            targets: B prompt targets.
            matches: the final layer's (query_idx, target_idx) arrays, one pair per prompt.

        Returns:
            (sum over pairs of the pixel-mean focal loss, sum over pairs of the dice loss).
        """
        w = self.weights
        kept = [
            (b, q, t) for b, (q, t) in enumerate(matches) if len(q) and targets[b].masks is not None
        ]
        zero = masks.new_zeros((), dtype=_loss_dtype(masks))
        if not kept:
            return zero, zero
        prompt_idx = np.concatenate([np.full_like(q, b) for b, q, _ in kept])
        query_idx = np.concatenate([q for _, q, _ in kept])
        index = torch.from_numpy(np.stack([prompt_idx, query_idx])).to(masks.device)
        pred = masks[index[0], index[1]].to(zero.dtype)  # [M, h, w], matched queries only
        gt = torch.cat([targets[b].masks[torch.from_numpy(t)] for b, _, t in kept])  # [M, H, W]
        size = self._target_size(tuple(gt.shape[-2:]))
        pred = _upsample_logits(pred, size).flatten(1)
        gt = _targets_on_grid(gt.to(pred.device), size, pred.dtype).flatten(1)
        focal = sigmoid_focal_loss(
            pred, gt, alpha=w.focal_alpha, gamma=w.focal_gamma, reduction="none"
        ).mean(1)
        return focal.sum(), dice_loss(pred, gt).sum()

    def _semantic_terms(
        self, semantic_logits: Tensor, targets: list[PromptTarget]
    ) -> tuple[Tensor, Tensor]:
        """Unweighted semantic focal and dice losses, averaged over prompts with a non-empty union.

        Args:
            semantic_logits: [B, 1, h, w] semantic-segmentation logits.
            targets: B prompt targets; the target is the union of a prompt's instance masks.

        Returns:
            (focal, dice), scalar tensors (zero when no prompt has a non-empty union).
        """
        w = self.weights
        zero = semantic_logits.new_zeros((), dtype=_loss_dtype(semantic_logits))
        candidates = [b for b, t in enumerate(targets) if t.masks is not None and len(t.masks)]
        if not candidates:
            return zero, zero
        unions = torch.stack([targets[b].masks.bool().any(0) for b in candidates])  # [C, H, W]
        non_empty = unions.flatten(1).any(1).tolist()
        valid = [b for b, keep in zip(candidates, non_empty, strict=True) if keep]
        if not valid:
            return zero, zero
        gt = unions[[i for i, keep in enumerate(non_empty) if keep]]  # [V, H, W]
        pred = semantic_logits[valid, 0].to(zero.dtype)  # [V, h, w]
        size = self._target_size(tuple(gt.shape[-2:]))
        pred = _upsample_logits(pred, size).flatten(1)
        gt = _targets_on_grid(gt.to(pred.device), size, pred.dtype).flatten(1)
        focal = sigmoid_focal_loss(
            pred, gt, alpha=w.semantic_focal_alpha, gamma=w.focal_gamma, reduction="none"
        ).mean(1)
        return focal.sum() / len(valid), dice_loss(pred, gt).sum() / len(valid)


def _layered(outputs: ConceptOutputs, batch: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-layer views of the outputs: logits [L, B, Q], boxes [L, B, Q, 4], presence [L, B]."""
    logits, boxes, presence = outputs.logits, outputs.boxes, outputs.presence_logits
    if logits.dim() == 2:
        logits, boxes, presence = logits[None], boxes[None], presence[None]
    if logits.dim() != 3 or logits.shape[1] != batch:
        raise ValueError(
            f"ConceptOutputs.logits must be [L, B, Q] or [B, Q] with B = {batch} targets, "
            f"got {tuple(outputs.logits.shape)}"
        )
    if boxes.shape != (*logits.shape, 4):
        raise ValueError(
            f"ConceptOutputs.boxes must be {(*logits.shape, 4)}, got {tuple(outputs.boxes.shape)}"
        )
    if presence.numel() != logits.shape[0] * batch:
        raise ValueError(
            f"ConceptOutputs.presence_logits must be [L, B, 1] = {(*logits.shape[:2], 1)}, "
            f"got {tuple(outputs.presence_logits.shape)}"
        )
    return logits, boxes, presence.reshape(logits.shape[:2])
