"""SAM3 concept loss: hand-computed terms, invariances, switches and gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from sam3_lora.tasks.concept.loss import ConceptOutputs, LossWeights, PromptTarget, Sam3ConceptLoss

DETECTION_TERMS = ("class", "presence", "box_l1", "giou")
MASK_TERMS = ("mask_focal", "mask_dice", "semantic_focal", "semantic_dice")

# ---------------------------------------------------------------------------------------------
# Reference formulas in NumPy, written from Meta's semantics (docs/training.md), not from the
# implementation.


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _bce(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """-t log(sigmoid x) - (1 - t) log(1 - sigmoid x)."""
    p = _sigmoid(x)
    return -t * np.log(p) - (1 - t) * np.log(1 - p)


def _focal(x: np.ndarray, t: np.ndarray, alpha: float, gamma: float) -> np.ndarray:
    p = _sigmoid(x)
    p_t = p * t + (1 - p) * (1 - t)
    return (alpha * t + (1 - alpha) * (1 - t)) * _bce(x, t) * (1 - p_t) ** gamma


def _dice(x: np.ndarray, t: np.ndarray) -> float:
    p, t = _sigmoid(x).ravel(), t.ravel()
    return 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)


def _upsample_2_to_4(x: np.ndarray) -> np.ndarray:
    """Bilinear 2x2 -> 4x4, align_corners=False: output pixel i samples input at i / 2 - 1 / 4."""
    weights = np.array([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])
    return weights @ x @ weights.T


def _iou_giou(box1: list[float], box2: list[float]) -> tuple[float, float]:
    """IoU and GIoU of two cxcywh boxes."""
    (ax, ay, aw, ah), (bx, by, bw, bh) = box1, box2
    a = (ax - aw / 2, ay - ah / 2, ax + aw / 2, ay + ah / 2)
    b = (bx - bw / 2, by - bh / 2, bx + bw / 2, by + bh / 2)
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = aw * ah + bw * bh - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union, inter / union - (hull - union) / hull


# ---------------------------------------------------------------------------------------------
# A small hand-checkable case: 4 prompts (2 targets, none, 1, 1), 3 queries, one layer,
# 2x2 predicted masks against 4x4 target masks. Boxes are placed so the matching is obvious.

LOGITS = [[1.5, -1.0, 0.5], [0.3, -2.0, 1.0], [-0.5, 2.0, -1.5], [-10.0, 0.0, -1.0]]
BOXES = [
    [[0.68, 0.62, 0.28, 0.22], [0.2, 0.85, 0.1, 0.1], [0.31, 0.28, 0.22, 0.18]],
    [[0.5, 0.5, 0.2, 0.2], [0.4, 0.6, 0.3, 0.1], [0.6, 0.3, 0.1, 0.3]],
    [[0.15, 0.15, 0.1, 0.1], [0.52, 0.47, 0.35, 0.33], [0.85, 0.8, 0.1, 0.15]],
    [[0.61, 0.5, 0.04, 0.2], [0.1, 0.9, 0.05, 0.05], [0.9, 0.1, 0.05, 0.05]],
]
PRESENCE = [0.8, -0.4, 1.2, -0.7]
TARGET_BOXES = [
    [[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]],
    [],
    [[0.5, 0.5, 0.4, 0.3]],
    [[0.5, 0.5, 0.2, 0.2]],
]
TARGET_MASKS = [
    [
        [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
        [[0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]],
    ],
    [],
    [[[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 1], [0, 0, 0, 0]]],
    [[[0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]],
]
# prompt: [(query, target)]. Prompt 3's match barely overlaps its target, with a very low logit:
# its IoU-aware target is floored at 0.01.
MATCHES = {0: [(2, 0), (0, 1)], 2: [(1, 0)], 3: [(0, 0)]}
PRED_MASKS = np.random.default_rng(0).normal(size=(4, 3, 2, 2)) * 2
SEMANTIC = np.random.default_rng(1).normal(size=(4, 1, 2, 2)) * 2


def _hand_case() -> tuple[ConceptOutputs, list[PromptTarget]]:
    outputs = ConceptOutputs(
        logits=torch.tensor(LOGITS, dtype=torch.float64),
        boxes=torch.tensor(BOXES, dtype=torch.float64),
        presence_logits=torch.tensor(PRESENCE, dtype=torch.float64)[:, None],
        masks=torch.tensor(PRED_MASKS),
        semantic_logits=torch.tensor(SEMANTIC),
    )
    targets = [
        PromptTarget(
            boxes=torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4),
            masks=torch.tensor(masks, dtype=torch.uint8).reshape(-1, 4, 4),
        )
        for boxes, masks in zip(TARGET_BOXES, TARGET_MASKS, strict=True)
    ]
    return outputs, targets


def _hand_expected() -> dict[str, float]:
    num_boxes = 4
    logits, presence = np.array(LOGITS), np.array(PRESENCE)
    targets = [np.array(m, dtype=float) for m in TARGET_MASKS]
    expected = dict.fromkeys(DETECTION_TERMS + MASK_TERMS, 0.0)
    class_sum = 0.0
    for b, pairs in MATCHES.items():
        matched = dict(pairs)
        for q in range(3):
            x = logits[b, q]
            p = _sigmoid(x)
            if q not in matched:
                class_sum += p**2 * _bce(x, 0.0)
                continue
            pred, target = BOXES[b][q], TARGET_BOXES[b][matched[q]]
            iou, giou = _iou_giou(pred, target)
            soft_target = max(p**0.25 * iou**0.75, 0.01)
            assert (soft_target == 0.01) == (b == 3)
            class_sum += 10 * _bce(x, soft_target)
            expected["box_l1"] += 5 * np.abs(np.array(pred) - np.array(target)).sum() / num_boxes
            expected["giou"] += 2 * (1 - giou) / num_boxes
            up = _upsample_2_to_4(PRED_MASKS[b, q])
            gt = targets[b][matched[q]]
            expected["mask_focal"] += 200 * _focal(up, gt, 0.25, 2).mean() / num_boxes
            expected["mask_dice"] += 10 * _dice(up, gt) / num_boxes
        union = targets[b].max(0)
        up = _upsample_2_to_4(SEMANTIC[b, 0])
        # Averaged over the 3 prompts whose union is not empty.
        expected["semantic_focal"] += 20 * _focal(up, union, 0.6, 2).mean() / 3
        expected["semantic_dice"] += 30 * _dice(up, union) / 3
    expected["class"] = 20 * class_sum / (4 * 200)  # B * max(Q, 200)
    expected["presence"] = 20 * np.mean(0.5 * _bce(presence, np.array([1.0, 0.0, 1.0, 1.0])))
    expected["loss"] = math.sqrt(4) * sum(expected.values())
    return expected


def test_each_term_matches_the_hand_computed_value() -> None:
    outputs, targets = _hand_case()

    losses = Sam3ConceptLoss()(outputs, targets)

    expected = _hand_expected()
    assert set(losses) == set(expected)
    for name, value in expected.items():
        assert losses[name].item() == pytest.approx(value, abs=1e-5), name


# ---------------------------------------------------------------------------------------------
# Random and perfect predictions for a few prompts.


def _raster(boxes: torch.Tensor, size: int) -> torch.Tensor:
    """[N, 4] cxcywh boxes -> [N, size, size] masks of the pixels whose centre is inside."""
    centres = (torch.arange(size, dtype=boxes.dtype) + 0.5) / size
    corners = torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], -1)
    x0, y0, x1, y1 = corners.T[:, :, None]  # each [N, 1]
    inside_x = (centres > x0) & (centres < x1)  # [N, size]
    inside_y = (centres > y0) & (centres < y1)
    return inside_y[:, :, None] & inside_x[:, None, :]


def _targets(sizes: tuple[int, ...], seed: int, target_size: int = 16) -> list[PromptTarget]:
    """Prompts with the given numbers of boxes, edges on a 1/8 grid, and their rasterised masks."""
    generator = torch.Generator().manual_seed(seed)
    targets = []
    for n in sizes:
        corners = torch.randint(1, 5, (n, 2), generator=generator)
        extents = torch.randint(2, 4, (n, 2), generator=generator)
        boxes = torch.cat([corners + extents / 2, extents], -1).double() / 8  # cxcywh
        targets.append(PromptTarget(boxes=boxes, masks=_raster(boxes, target_size)))
    return targets


def _random_outputs(
    batch: int, seed: int, layers: int = 2, queries: int = 6, mask_size: int = 8
) -> ConceptOutputs:
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_()

    boxes = torch.rand(layers, batch, queries, 4, generator=generator, dtype=torch.float64)
    boxes = boxes * torch.tensor([0.6, 0.6, 0.4, 0.4]) + torch.tensor([0.2, 0.2, 0.05, 0.05])
    return ConceptOutputs(
        logits=randn(layers, batch, queries),
        boxes=boxes.requires_grad_(),
        presence_logits=randn(layers, batch, 1),
        masks=randn(batch, queries, mask_size, mask_size),
        semantic_logits=randn(batch, 1, mask_size, mask_size),
    )


def _perfect_outputs(
    targets: list[PromptTarget], layers: int = 2, queries: int = 6, mask_size: int = 8
) -> ConceptOutputs:
    """Query i of a prompt predicts its target i exactly, with confident logits; others are off."""
    batch = len(targets)
    logits = torch.full((layers, batch, queries), -10.0, dtype=torch.float64)
    boxes = torch.full((layers, batch, queries, 4), 0.5, dtype=torch.float64)
    presence = torch.full((layers, batch, 1), -10.0, dtype=torch.float64)
    masks = torch.full((batch, queries, mask_size, mask_size), -10.0, dtype=torch.float64)
    semantic = torch.full((batch, 1, mask_size, mask_size), -10.0, dtype=torch.float64)
    for b, target in enumerate(targets):
        n = len(target.boxes)
        if n == 0:
            continue
        logits[:, b, :n] = 10.0
        boxes[:, b, :n] = target.boxes
        presence[:, b] = 10.0
        low_res = _raster(target.boxes, mask_size)
        masks[b, :n] = torch.where(low_res, 10.0, -10.0)
        semantic[b, 0] = torch.where(low_res.any(0), 10.0, -10.0)
    return ConceptOutputs(logits, boxes, presence, masks, semantic)


@pytest.mark.parametrize("mask_loss_resolution", [None, 8])
def test_perfect_prediction_scores_far_lower_than_random(mask_loss_resolution: int | None) -> None:
    targets = _targets((2, 0, 3), seed=0)
    loss = Sam3ConceptLoss(LossWeights(mask_loss_resolution=mask_loss_resolution))

    perfect = loss(_perfect_outputs(targets), targets)
    random = loss(_random_outputs(len(targets), seed=1), targets)

    assert perfect["loss"] < 0.05 * random["loss"]
    for name in DETECTION_TERMS + MASK_TERMS:
        assert perfect[name] < random[name], name


def test_permuting_queries_leaves_the_loss_unchanged() -> None:
    targets = _targets((2, 0, 3), seed=2)
    outputs = _random_outputs(len(targets), seed=3)
    order = torch.randperm(outputs.logits.shape[-1], generator=torch.Generator().manual_seed(4))
    permuted = ConceptOutputs(
        logits=outputs.logits[..., order],
        boxes=outputs.boxes[:, :, order],
        presence_logits=outputs.presence_logits,
        masks=outputs.masks[:, order],
        semantic_logits=outputs.semantic_logits,
    )

    original, shuffled = Sam3ConceptLoss()(outputs, targets), Sam3ConceptLoss()(permuted, targets)

    for name, value in original.items():
        assert shuffled[name].item() == pytest.approx(value.item(), rel=1e-10), name


def test_prompt_without_targets_gets_only_the_presence_term() -> None:
    targets = [*_targets((2,), seed=5), PromptTarget(torch.zeros(0, 4), torch.zeros(0, 16, 16))]
    outputs = _random_outputs(2, seed=6)

    alone = Sam3ConceptLoss()(
        ConceptOutputs(
            outputs.logits[:, 1:],
            outputs.boxes[:, 1:],
            outputs.presence_logits[:, 1:],
            outputs.masks[1:],
            outputs.semantic_logits[1:],
        ),
        targets[1:],
    )
    Sam3ConceptLoss()(outputs, targets)["loss"].backward()

    assert alone["presence"] > 0
    assert alone["loss"] == alone["presence"]
    assert all(alone[name] == 0 for name in DETECTION_TERMS + MASK_TERMS if name != "presence")
    # In a mixed batch, the empty prompt's outputs get gradient from presence only.
    assert outputs.presence_logits.grad[:, 1].abs().min() > 0
    assert outputs.logits.grad[:, 1].abs().max() == 0
    assert outputs.boxes.grad[:, 1].abs().max() == 0
    assert outputs.masks.grad[1].abs().max() == 0
    assert outputs.semantic_logits.grad[1].abs().max() == 0


def test_detection_only_has_no_mask_terms() -> None:
    targets = _targets((2, 0, 3), seed=7)
    outputs = _random_outputs(len(targets), seed=8)
    with_masks = Sam3ConceptLoss()(outputs, targets)
    outputs.masks = outputs.semantic_logits = None

    losses = Sam3ConceptLoss(LossWeights(masks=False))(outputs, targets)

    assert all(losses[name] == 0 for name in MASK_TERMS)
    for name in DETECTION_TERMS:
        assert losses[name].item() == pytest.approx(with_masks[name].item(), rel=1e-12)
    total = math.sqrt(3) * sum(losses[name] for name in DETECTION_TERMS)
    assert losses["loss"].item() == pytest.approx(total.item(), rel=1e-12)


def test_aux_layers_sum_every_layer_or_use_the_final_one() -> None:
    targets = _targets((1, 0, 2), seed=9)
    outputs = _random_outputs(len(targets), seed=10, layers=3)

    def single_layer(layer: int) -> dict[str, torch.Tensor]:
        one = ConceptOutputs(
            outputs.logits[layer],
            outputs.boxes[layer],
            outputs.presence_logits[layer],
            outputs.masks,
            outputs.semantic_logits,
        )
        return Sam3ConceptLoss()(one, targets)

    every = Sam3ConceptLoss(LossWeights(aux_layers=True))(outputs, targets)
    final = Sam3ConceptLoss(LossWeights(aux_layers=False))(outputs, targets)

    per_layer = [single_layer(layer) for layer in range(3)]
    for name in DETECTION_TERMS:
        assert every[name].item() == pytest.approx(sum(r[name].item() for r in per_layer))
        assert final[name].item() == pytest.approx(per_layer[-1][name].item())
    for name in MASK_TERMS:  # final layer only, either way
        assert every[name].item() == pytest.approx(per_layer[-1][name].item())
        assert final[name].item() == pytest.approx(per_layer[-1][name].item())


def test_degenerate_matched_boxes_give_finite_loss_and_gradients() -> None:
    # One query per prompt, so each zero-size box is matched.
    boxes = torch.tensor([[[0.5, 0.5, 0.0, 0.0]], [[0.4, 0.4, 0.2, 0.2]], [[0.3, 0.3, 0.0, 0.1]]])
    boxes.requires_grad_()
    logits = torch.tensor([[2.0], [-1.0], [0.5]], requires_grad=True)
    targets = [
        PromptTarget(torch.tensor([[0.5, 0.5, 0.0, 0.0]]), torch.zeros(1, 8, 8)),
        PromptTarget(torch.tensor([[0.4, 0.4, 0.0, 0.0]]), torch.zeros(1, 8, 8)),
        PromptTarget(torch.tensor([[0.7, 0.7, 0.0, 0.0]]), torch.zeros(1, 8, 8)),
    ]
    outputs = ConceptOutputs(
        logits, boxes, torch.zeros(3, 1), torch.zeros(3, 1, 4, 4), torch.zeros(3, 1, 4, 4)
    )

    losses = Sam3ConceptLoss()(outputs, targets)
    losses["loss"].backward()

    assert all(torch.isfinite(value) for value in losses.values())
    assert torch.isfinite(boxes.grad).all() and torch.isfinite(logits.grad).all()


def test_gradients_reach_the_lora_adapter() -> None:
    class QueryHead(nn.Module):
        """Per-query features -> logit and box (4 sigmoid coordinates)."""

        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(8, 5)

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return self.proj(features)

    torch.manual_seed(0)
    model = get_peft_model(QueryHead(), LoraConfig(r=2, target_modules=["proj"]))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    features = torch.randn(2, 3, 4, 8)  # [L, B, Q, D]
    targets = _targets((2, 0, 1), seed=11, target_size=8)
    loss_fn = Sam3ConceptLoss()
    lora_a = model.base_model.model.proj.lora_A["default"].weight
    lora_b = model.base_model.model.proj.lora_B["default"].weight

    def step() -> None:
        head = model(features)
        outputs = ConceptOutputs(
            logits=head[..., 0],
            boxes=head[..., 1:].sigmoid(),
            presence_logits=head[..., :1].mean(2),
            masks=head[-1, :, :, :1, None].expand(3, 4, 4, 4),
            semantic_logits=torch.zeros(3, 1, 4, 4),
        )
        optimizer.zero_grad()
        loss_fn(outputs, targets)["loss"].backward()

    step()
    # LoRA starts with B = 0: B gets a gradient at once, A only once B has moved.
    assert lora_b.grad.abs().sum() > 0
    assert lora_a.grad.abs().sum() == 0
    assert model.base_model.model.proj.base_layer.weight.grad is None
    optimizer.step()
    step()
    assert lora_a.grad.abs().sum() > 0 and lora_b.grad.abs().sum() > 0
