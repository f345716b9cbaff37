"""Promptable validation: per-object IoU / Dice by hand, the validation step, the summary."""

from __future__ import annotations

import pytest
import torch

from sam3_lora.tasks.promptable.loss import MaskPrediction, PromptableLoss
from sam3_lora.tasks.promptable.module import PromptableModel
from sam3_lora.tasks.promptable.tiny import create_tiny_sam2
from sam3_lora.tasks.promptable.validation import object_metrics, summarize, validation_step
from tests.test_promptable_module import make_batch


@pytest.fixture
def one_thread() -> object:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _prediction(logits: torch.Tensor, ious: list[list[float]], index: list[int]) -> MaskPrediction:
    return MaskPrediction(
        object_index=torch.tensor(index),
        mask_logits=logits,
        iou_scores=torch.tensor(ious),
        object_score_logits=torch.zeros(len(index), 1),
    )


def test_object_metrics_by_hand() -> None:
    targets = torch.zeros(3, 4, 4, dtype=torch.bool)
    targets[0, :2, :2] = True  # 4 pixels
    targets[1, :2, :2] = True
    logits = -torch.ones(2, 2, 4, 4)
    logits[0, 1, 0, :3] = 1.0  # the kept mask (higher predicted IoU): 3 pixels, 2 on target
    logits[0, 0] = 1.0  # a full mask with lower predicted IoU, ignored
    logits[1, 0, :2, :2] = 1.0  # exact; object row 0 in the batch
    first = _prediction(logits, [[0.2, 0.9], [0.8, 0.1]], [1, 0])
    # Object 2: low-resolution logits, upsampled: [[1, -1], [-1, -1]] -> the top-left 2 x 2.
    coarse = torch.tensor([[[[1.0, -1.0], [-1.0, -1.0]]]])
    second = _prediction(coarse, [[0.5]], [2])
    targets[2, :2, :2] = True
    metrics = object_metrics([first, second], targets)
    # Object 1: overlap 2, union 5 -> IoU 0.4, Dice 2 * 2 / (3 + 4).
    torch.testing.assert_close(metrics["iou"], torch.tensor([1.0, 0.4, 1.0]))
    torch.testing.assert_close(metrics["dice"], torch.tensor([1.0, 4 / 7, 1.0]))

    empty = object_metrics(
        [_prediction(-torch.ones(1, 1, 4, 4), [[0.5]], [0])], targets[:1] & False
    )
    assert empty["iou"].item() == 1.0 and empty["dice"].item() == 1.0


def test_validation_step_uses_evaluation_prompts(one_thread: None) -> None:
    module = PromptableModel(create_tiny_sam2().model, correction_rounds=3).train()
    batch = make_batch(128)
    record = validation_step(module, PromptableLoss(), batch)
    again = validation_step(module, PromptableLoss(), batch)
    assert record["iou"].shape == record["dice"].shape == (4,)
    assert torch.equal(record["iou"], again["iou"])  # box prompts, no sampling
    assert record["prompts"].tolist() == [4.0]
    expected = {"loss/loss", "loss/mask_focal", "loss/mask_dice", "loss/iou", "loss/object_score"}
    assert expected <= set(record)
    points = validation_step(module, PromptableLoss(), batch, prompt="point", correction_clicks=2)
    assert torch.isfinite(points["loss/loss"]).all()
    assert module.training  # left as it was


def test_summarize_weights_losses_by_objects() -> None:
    records = [
        {
            "iou": torch.tensor([0.5]),
            "dice": torch.tensor([0.6]),
            "prompts": torch.tensor([1.0]),
            "loss/loss": torch.tensor([2.0]),
            "loss/iou": torch.tensor([0.2]),
        },
        {
            "iou": torch.tensor([1.0, 0.0, 0.5]),
            "dice": torch.tensor([1.0, 0.0, 0.6]),
            "prompts": torch.tensor([3.0]),
            "loss/loss": torch.tensor([4.0]),
            "loss/iou": torch.tensor([0.6]),
        },
    ]
    metrics = summarize(records)
    assert metrics["val/miou"] == pytest.approx(0.5)
    assert metrics["val/dice"] == pytest.approx(0.55)
    assert metrics["val/loss"] == pytest.approx((2 + 12) / 4)
    assert metrics["val/loss_iou"] == pytest.approx((0.2 + 1.8) / 4)
    assert metrics["val/prompts"] == 4.0
    assert set(summarize(records, prefix="val/point/")) == {f"val/point/{k[4:]}" for k in metrics}
    assert summarize([]) == {}
