"""Hungarian matching of SAM3 detection queries to the ground-truth instances of each prompt.

Meta's SAM3 training (``sam3/train/matcher.py``, ``BinaryHungarianMatcherV2`` with ``focal=True``)
matches every decoder layer on its own outputs, one (image, prompt) pair at a time, with the cost

    cost = box_cost * L1(cxcywh) + class_cost * focal_cost(p) - giou_cost * GIoU(xyxy)
    focal_cost(p) = -alpha * (1 - p)^gamma * log(p) + (1 - alpha) * p^gamma * log(1 - p)

where ``p = sigmoid(query logit)``; the presence logit plays no part. Prompts without targets get
no matches. The cost is computed batched over prompts on the predictions' device (in groups of
bounded size) and moved to the CPU in one copy per layer; only
``scipy.optimize.linear_sum_assignment`` runs per prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import box_convert, generalized_box_iou

if TYPE_CHECKING:
    from sam3_lora.tasks.concept.loss import PromptTarget


def _target_boxes(target: Tensor | PromptTarget) -> Tensor:
    """The [N, 4] cxcywh boxes of one prompt, given the boxes or a ``PromptTarget``."""
    return target if isinstance(target, Tensor) else target.boxes


# Largest [P * Q, T] cost matrix built at once (elements): 1 M floats = 4 MiB. Bounds both memory
# and the work spent on the off-diagonal blocks, which grows with the square of the batch.
_MAX_GROUP_COST_ELEMENTS = 1 << 20


def _group_prompts(prompts: list[int], sizes: list[int], num_queries: int) -> list[list[int]]:
    """Split prompts into consecutive groups whose [P * Q, T] cost matrix stays bounded."""
    groups: list[list[int]] = [[]]
    group_targets = 0
    for b in prompts:
        grown = (len(groups[-1]) + 1) * num_queries * (group_targets + sizes[b])
        if groups[-1] and grown > _MAX_GROUP_COST_ELEMENTS:
            groups.append([])
            group_targets = 0
        groups[-1].append(b)
        group_targets += sizes[b]
    return groups


def _group_cost(
    logits: Tensor,
    boxes: Tensor,
    target_boxes: Tensor,
    *,
    class_cost: float,
    box_cost: float,
    giou_cost: float,
    focal_alpha: float,
    focal_gamma: float,
) -> Tensor:
    """Matching cost of every query of a group of prompts against every target of the group.

    Args:
        logits: [P, Q] raw query logits.
        boxes: [P, Q, 4] cxcywh predicted boxes.
        target_boxes: [T, 4] cxcywh target boxes of the P prompts, concatenated.

    Returns:
        [P * Q, T] cost (float32, on the predictions' device).
    """
    query_logits = logits.flatten().float()  # [P * Q]
    query_boxes = boxes.reshape(-1, 4).float()  # [P * Q, 4]
    target_boxes = target_boxes.to(query_boxes)
    prob = query_logits.sigmoid()
    # -alpha (1 - p)^gamma log p + (1 - alpha) p^gamma log(1 - p), with stable log-sigmoids.
    focal_cost = -focal_alpha * (1 - prob) ** focal_gamma * F.logsigmoid(query_logits) + (
        1 - focal_alpha
    ) * prob**focal_gamma * F.logsigmoid(-query_logits)
    giou = generalized_box_iou(
        box_convert(query_boxes, "cxcywh", "xyxy"), box_convert(target_boxes, "cxcywh", "xyxy")
    )
    # Two zero-area boxes have no defined GIoU (0 / 0); count it as neutral.
    giou = torch.nan_to_num(giou, nan=0.0)
    return (
        box_cost * torch.cdist(query_boxes, target_boxes, p=1)
        + class_cost * focal_cost[:, None]
        - giou_cost * giou
    )


@torch.no_grad()
def match_queries_numpy(
    logits: Tensor,
    boxes: Tensor,
    targets: Sequence[Tensor | PromptTarget],
    *,
    class_cost: float = 2.0,
    box_cost: float = 5.0,
    giou_cost: float = 2.0,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Match queries to targets for one decoder layer; indices as NumPy arrays.

    Same as :func:`match_queries`, for callers that gather many prompts' indices at once and
    want a single host-to-device copy.

    Returns:
        One ``(query_idx, target_idx)`` pair of int64 arrays per prompt, each of length
        ``min(Q, N_b)`` (empty for a prompt without targets).
    """
    if logits.dim() != 2 or boxes.shape != (*logits.shape, 4):
        raise ValueError(
            f"match_queries expects logits [B, Q] and boxes [B, Q, 4], got {tuple(logits.shape)} "
            f"and {tuple(boxes.shape)}"
        )
    if len(targets) != logits.shape[0]:
        raise ValueError(f"{len(targets)} targets for a batch of {logits.shape[0]} prompts")
    num_queries = logits.shape[1]
    target_boxes = [_target_boxes(t) for t in targets]
    sizes = [len(t) for t in target_boxes]
    empty = np.zeros(0, dtype=np.int64)
    matches: list[tuple[np.ndarray, np.ndarray]] = [(empty, empty)] * len(targets)
    with_targets = [b for b, n in enumerate(sizes) if n > 0]
    if not with_targets:
        return matches

    # The cost of a group of prompts is computed as one [P * Q, T] matrix (all their queries
    # against all their targets, a few kernels whatever P is); only its diagonal blocks (prompt b's
    # queries against prompt b's targets) are kept. Groups bound that matrix's size; the kept
    # blocks of all groups travel to the CPU in one copy.
    blocks: list[Tensor] = []
    for group in _group_prompts(with_targets, sizes, num_queries):
        cost = _group_cost(
            logits[group],
            boxes[group],
            torch.cat([target_boxes[b] for b in group]),
            class_cost=class_cost,
            box_cost=box_cost,
            giou_cost=giou_cost,
            focal_alpha=focal_alpha,
            focal_gamma=focal_gamma,
        )
        start = 0
        for row, b in enumerate(group):
            rows = slice(row * num_queries, (row + 1) * num_queries)
            blocks.append(cost[rows, start : start + sizes[b]].flatten())
            start += sizes[b]
    flat_cost = torch.cat(blocks).cpu().numpy()
    if not np.isfinite(flat_cost).all():
        raise FloatingPointError(
            "the matching cost has NaN or inf entries: the model's query logits or boxes are not "
            "finite (diverged training? lower the learning rate or check the inputs)"
        )

    start = 0
    for b in with_targets:
        size = num_queries * sizes[b]
        block = flat_cost[start : start + size].reshape(num_queries, sizes[b])
        query_idx, target_idx = linear_sum_assignment(block)
        matches[b] = (query_idx.astype(np.int64), target_idx.astype(np.int64))
        start += size
    return matches


def match_queries(
    logits: Tensor,
    boxes: Tensor,
    targets: Sequence[Tensor | PromptTarget],
    *,
    class_cost: float = 2.0,
    box_cost: float = 5.0,
    giou_cost: float = 2.0,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> list[tuple[Tensor, Tensor]]:
    """Hungarian matching of one decoder layer's queries to each prompt's targets.

    Runs under ``torch.no_grad()``; the cost is Meta's (see the module docstring).

    Args:
        logits: [B, Q] raw query logits, B = number of (image, prompt) pairs.
        boxes: [B, Q, 4] predicted boxes, cxcywh normalised to [0, 1].
        targets: B entries, each the prompt's [N_b, 4] cxcywh target boxes or a ``PromptTarget``
            (N_b may be 0).
        class_cost: weight of the focal classification cost.
        box_cost: weight of the L1 cost on cxcywh boxes.
        giou_cost: weight of the (negative) GIoU cost on xyxy boxes.
        focal_alpha: alpha of the focal classification cost.
        focal_gamma: gamma of the focal classification cost.

    Returns:
        One ``(query_idx, target_idx)`` pair of int64 tensors per prompt, on ``logits.device``,
        each of length ``min(Q, N_b)`` (empty for a prompt without targets); ``query_idx`` is
        sorted.
    """
    matches = match_queries_numpy(
        logits,
        boxes,
        targets,
        class_cost=class_cost,
        box_cost=box_cost,
        giou_cost=giou_cost,
        focal_alpha=focal_alpha,
        focal_gamma=focal_gamma,
    )
    return [
        (torch.from_numpy(q).to(logits.device), torch.from_numpy(t).to(logits.device))
        for q, t in matches
    ]
