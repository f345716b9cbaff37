"""SAM2.1 loss (MultiStepMultiMasksAndIous): hand-computed terms, mask choice, steps, empties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sam3_lora.tasks.promptable.loss import MaskPrediction, PromptableLoss

# ---------------------------------------------------------------------------------------------
# Reference formulas in NumPy (float64), written from docs/TRAINING-FACTS.md, not from loss.py.


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _reference(
    logits: np.ndarray,
    ious: np.ndarray,
    object_logits: np.ndarray,
    targets: np.ndarray,
    weights: tuple[float, float, float, float] = (20, 1, 1, 1),
) -> dict[str, float]:
    """Weighted terms for logits [N, M, H, W], ious [N, M], object_logits [N], targets [N, H, W],
    divided by N."""
    w_focal, w_dice, w_iou, w_object = weights
    sums = dict.fromkeys(("mask_focal", "mask_dice", "iou", "object_score"), 0.0)
    for x, iou_pred, object_logit, t in zip(logits, ious, object_logits, targets, strict=True):
        p = _sigmoid(x)
        ce = -t * np.log(p) - (1 - t) * np.log(1 - p)
        p_t = p * t + (1 - p) * (1 - t)
        alpha_t = 0.25 * t + 0.75 * (1 - t)
        focal = (alpha_t * ce * (1 - p_t) ** 2).mean(axis=(1, 2))  # per mask
        dice = 1 - (2 * (p * t).sum(axis=(1, 2)) + 1) / (p.sum(axis=(1, 2)) + t.sum() + 1)
        hit = x > 0
        actual = (hit & (t > 0)).sum(axis=(1, 2)) / np.maximum((hit | (t > 0)).sum(axis=(1, 2)), 1)
        best = int(np.argmin(w_focal * focal + w_dice * dice))
        present = float(t.any())
        sums["mask_focal"] += focal[best] * present
        sums["mask_dice"] += dice[best] * present
        sums["iou"] += np.abs(iou_pred - actual).mean() * present
        q = _sigmoid(object_logit)
        sums["object_score"] += -present * math.log(q) - (1 - present) * math.log(1 - q)
    count = len(targets)
    return {
        "mask_focal": w_focal * sums["mask_focal"] / count,
        "mask_dice": w_dice * sums["mask_dice"] / count,
        "iou": w_iou * sums["iou"] / count,
        "object_score": w_object * sums["object_score"] / count,
    }


def _prediction(logits, ious, object_logits, index=None) -> MaskPrediction:
    logits = torch.as_tensor(logits, dtype=torch.float32)
    index = torch.arange(len(logits)) if index is None else torch.as_tensor(index)
    return MaskPrediction(
        object_index=index,
        mask_logits=logits,
        iou_scores=torch.as_tensor(ious, dtype=torch.float32),
        object_score_logits=torch.as_tensor(object_logits, dtype=torch.float32).reshape(-1, 1),
    )


def _two_objects() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """2 objects x 2 masks x 4 x 4 (seed 4: the 20 * focal + dice pick differs from dice's)."""
    logits = np.random.default_rng(4).normal(0, 2, (2, 2, 4, 4))
    targets = np.zeros((2, 4, 4))
    targets[0, 1:3, 1:3] = 1
    targets[1, 0, 0] = targets[1, 0, 1] = targets[1, 3, 3] = 1
    ious = np.array([[0.3, 0.8], [0.5, 0.1]])
    object_logits = np.array([0.7, -0.4])
    return logits, ious, object_logits, targets


def _assert_terms(result: dict[str, torch.Tensor], expected: dict[str, float]) -> None:
    for name, value in expected.items():
        assert result[name].item() == pytest.approx(value, rel=1e-5, abs=1e-7), name
    assert result["loss"].item() == pytest.approx(sum(expected.values()), rel=1e-5)


def test_closed_form_single_mask() -> None:
    """Zero logits (p = 1/2), a 4-pixel target on 4 x 4, predicted IoU 0.6, object logit 0."""
    targets = torch.zeros(1, 4, 4, dtype=torch.bool)
    targets[0, :2, :2] = True
    result = PromptableLoss()([_prediction(torch.zeros(1, 1, 4, 4), [[0.6]], [0.0])], targets)
    # focal per pixel: ln2 * (1/2)^2 * alpha_t; 4 positives (0.25), 12 negatives (0.75).
    focal = math.log(2) * 0.25 * (4 * 0.25 + 12 * 0.75) / 16
    dice = 1 - (2 * 4 * 0.5 + 1) / (16 * 0.5 + 4 + 1)  # = 8 / 13
    iou = 0.6  # nothing predicted (logits > 0 is empty): actual IoU 0
    _assert_terms(
        result,
        {"mask_focal": 20 * focal, "mask_dice": dice, "iou": iou, "object_score": math.log(2)},
    )


def test_two_objects_two_masks_match_the_reference() -> None:
    logits, ious, object_logits, targets = _two_objects()
    result = PromptableLoss()(
        [_prediction(logits, ious, object_logits)], torch.from_numpy(targets).bool()
    )
    _assert_terms(result, _reference(logits, ious, object_logits, targets))

    # The kept mask is the argmin of the *weighted* sum: here not dice's argmin.
    p = _sigmoid(logits)
    dice = 1 - (2 * (p * targets[:, None]).sum((2, 3)) + 1) / (
        p.sum((2, 3)) + targets[:, None].sum((2, 3)) + 1
    )
    dice_only = PromptableLoss(focal_weight=0.0)(
        [_prediction(logits, ious, object_logits)], torch.from_numpy(targets).bool()
    )
    assert dice_only["mask_dice"].item() == pytest.approx(dice.min(1).mean(), rel=1e-5)
    assert dice_only["mask_dice"].item() < result["mask_dice"].item()


def test_iou_on_the_kept_mask_only_and_squared_error() -> None:
    logits, ious, object_logits, targets = _two_objects()
    loss = PromptableLoss(supervise_all_iou=False, iou_use_l1_loss=False)
    result = loss([_prediction(logits, ious, object_logits)], torch.from_numpy(targets).bool())
    expected = 0.0
    for x, iou_pred, t in zip(logits, ious, targets, strict=True):
        p = _sigmoid(x)
        ce = -t * np.log(p) - (1 - t) * np.log(1 - p)
        p_t = p * t + (1 - p) * (1 - t)
        focal = ((0.25 * t + 0.75 * (1 - t)) * ce * (1 - p_t) ** 2).mean((1, 2))
        dice = 1 - (2 * (p * t).sum((1, 2)) + 1) / (p.sum((1, 2)) + t.sum() + 1)
        best = np.argmin(20 * focal + dice)
        actual = ((x[best] > 0) & (t > 0)).sum() / max(((x[best] > 0) | (t > 0)).sum(), 1)
        expected += (iou_pred[best] - actual) ** 2 / 2
    assert result["iou"].item() == pytest.approx(expected, rel=1e-5)


def test_empty_target_trains_only_the_object_score() -> None:
    logits, ious, object_logits, targets = _two_objects()
    targets[1] = 0
    tensor_logits = torch.tensor(logits, dtype=torch.float32, requires_grad=True)
    prediction = _prediction(tensor_logits, ious, object_logits)
    result = PromptableLoss()([prediction], torch.from_numpy(targets).bool())
    _assert_terms(result, _reference(logits, ious, object_logits, targets))
    result["loss"].backward()
    assert tensor_logits.grad[1].abs().max() == 0  # no mask gradient for the empty target
    assert tensor_logits.grad[0].abs().max() > 0
    alone = PromptableLoss()(
        [_prediction(logits[1:], ious[1:], object_logits[1:])],
        torch.zeros(1, 4, 4, dtype=torch.bool),
    )
    assert alone["mask_focal"] == alone["mask_dice"] == alone["iou"] == 0
    assert alone["object_score"].item() == pytest.approx(-math.log(1 - _sigmoid(-0.4)))


def test_steps_and_groups_are_summed_and_divided_by_num_objects() -> None:
    logits, ious, object_logits, targets = _two_objects()
    targets_t = torch.from_numpy(targets).bool()
    loss = PromptableLoss()
    first = _prediction(logits, ious, object_logits)
    # Second step: one object per group, single-mask outputs (a click was added).
    second = [
        _prediction(logits[i : i + 1, :1] - 0.5, ious[i : i + 1, :1], object_logits[i : i + 1], [i])
        for i in (1, 0)
    ]
    both = loss([[first], second], targets_t)
    alone = [loss([first], targets_t), loss([second], targets_t)]
    for name in ("loss", "mask_focal", "mask_dice", "iou", "object_score"):
        assert both[name].item() == pytest.approx(
            (alone[0][name] + alone[1][name]).item(), rel=1e-6
        )
    single = _reference(logits[:, :1] - 0.5, ious[:, :1], object_logits, targets)
    _assert_terms(alone[1], single)

    halved = loss([first], targets_t, num_objects=torch.tensor(4.0))
    assert halved["loss"].item() == pytest.approx(alone[0]["loss"].item() / 2, rel=1e-6)
    clamped = loss([first], targets_t, num_objects=0)
    assert clamped["loss"].item() == pytest.approx(alone[0]["loss"].item() * 2, rel=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        loss([], targets_t)


def test_low_resolution_logits_are_upsampled_to_the_targets() -> None:
    logits, ious, object_logits, targets = _two_objects()
    low = torch.tensor(logits[:, :, ::2, ::2].copy(), dtype=torch.float32)  # [2, 2, 2, 2]
    upsampled = F.interpolate(low, size=(4, 4), mode="bilinear", align_corners=False)
    result = PromptableLoss()(
        [_prediction(low, ious, object_logits)], torch.from_numpy(targets).bool()
    )
    _assert_terms(result, _reference(upsampled.double().numpy(), ious, object_logits, targets))


def test_mask_loss_resolution_uses_area_averaged_targets() -> None:
    targets = torch.zeros(1, 4, 4, dtype=torch.bool)
    targets[0, :2, :2] = True  # area-averaged to 2 x 2: [[1, 0], [0, 0]]
    constant = torch.zeros(1, 1, 8, 8)
    coarse = PromptableLoss(mask_loss_resolution=2)(
        [_prediction(constant, [[0.0]], [0.0])], targets
    )
    focal = math.log(2) * 0.25 * (1 * 0.25 + 3 * 0.75) / 4
    dice = 1 - (2 * 0.5 + 1) / (4 * 0.5 + 1 + 1)
    assert coarse["mask_focal"].item() == pytest.approx(20 * focal, rel=1e-6)
    assert coarse["mask_dice"].item() == pytest.approx(dice, rel=1e-6)


def test_gradients_reach_masks_ious_and_object_scores() -> None:
    logits, ious, object_logits, targets = _two_objects()
    tensors = [
        torch.tensor(a, dtype=torch.float32, requires_grad=True)
        for a in (logits, ious, object_logits.reshape(-1, 1))
    ]
    prediction = MaskPrediction(torch.arange(2), *tensors)
    PromptableLoss()([prediction], torch.from_numpy(targets).bool())["loss"].backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in tensors)
    # Only the kept mask gets focal / dice gradient; the other still gets none of them (IoU
    # has no gradient path to the logits).
    kept_only = tensors[0].grad.flatten(2).abs().sum(-1)
    assert ((kept_only > 0).sum(1) == 1).all()


def test_best_mask_logits_follow_the_predicted_iou() -> None:
    logits = torch.arange(2 * 3 * 1 * 1, dtype=torch.float32).reshape(2, 3, 1, 1)
    prediction = _prediction(logits, [[0.1, 0.9, 0.2], [0.7, 0.1, 0.3]], [0.0, 0.0])
    assert prediction.best_mask_logits().flatten().tolist() == [1.0, 3.0]
    assert prediction.num_masks == 3
