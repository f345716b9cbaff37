from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sam3_lora.config import LoraSettings
from sam3_lora.data.coco import CocoDataset
from sam3_lora.data.prompts import NEGATIVE_PROMPT_ID, ConceptDataset, collate_concept_samples
from sam3_lora.data.transforms import build_transforms
from sam3_lora.lora import apply_lora_to_model
from sam3_lora.models import create_tiny_sam3
from sam3_lora.tasks.concept import ConceptTask, summarize_validation
from sam3_lora.tasks.losses import Sam3ConceptLoss


def _dataset(shapes_dir: Path, train: bool = True, **kwargs: object) -> ConceptDataset:
    coco = CocoDataset.from_split_dir(shapes_dir / "train")
    return ConceptDataset(coco, build_transforms(224, train=train), train=train, **kwargs)


def test_every_category_is_a_prompt_plus_hard_negatives(shapes_dir: Path) -> None:
    dataset = _dataset(shapes_dir, num_negative_prompts=2)
    names = {c.name for c in dataset.coco.categories}
    for index in range(len(dataset)):
        sample = dataset[index]
        assert set(sample.prompts[:3]) == names
        assert sample.prompt_category_ids[3:] == [NEGATIVE_PROMPT_ID] * 2
        assert all(len(b) == 0 for b in sample.target_boxes[3:])
        assert not set(sample.prompts[3:]) & names
        instances = [i for i in dataset.coco.instances(index) if not i.iscrowd]
        assert sum(len(b) for b in sample.target_boxes) <= len(instances)
        for boxes, masks in zip(sample.target_boxes, sample.target_masks, strict=True):
            assert boxes.shape[0] == masks.shape[0] and masks.shape[1:] == (224, 224)
            assert ((boxes >= 0) & (boxes <= 1)).all()


def test_samples_are_reproducible_per_epoch(shapes_dir: Path) -> None:
    dataset = _dataset(shapes_dir)
    first, again = dataset[1], dataset[1]
    assert torch.equal(first.pixel_values, again.pixel_values)
    dataset.set_epoch(1)
    assert not torch.equal(first.pixel_values, dataset[1].pixel_values)


def test_prompt_cap_keeps_positives(shapes_dir: Path) -> None:
    dataset = _dataset(shapes_dir, max_prompts_per_image=1, num_negative_prompts=0)
    for index in range(len(dataset)):
        sample = dataset[index]
        assert len(sample.prompts) == 1
        assert len(sample.target_boxes[0]) > 0


def test_vision_once_per_image_and_text_once_per_prompt(shapes_dir: Path) -> None:
    loaded = create_tiny_sam3()
    model = apply_lora_to_model(loaded.model, LoraSettings(rank=4))
    task = ConceptTask(model, loaded.processor.tokenizer, Sam3ConceptLoss())
    dataset = _dataset(shapes_dir, num_negative_prompts=1)
    batch = collate_concept_samples([dataset[0], dataset[1]])
    calls = {"vision": [], "text": []}
    sam3 = model.get_base_model()
    sam3.vision_encoder.register_forward_hook(
        lambda _m, args, _o: calls["vision"].append(args[0].shape[0])
    )
    sam3.text_encoder.register_forward_hook(
        lambda _m, _a, out: calls["text"].append(out.last_hidden_state.shape[0])
    )
    outputs = task.forward(batch)
    assert calls["vision"] == [2]  # two images, once each, for all their prompts
    assert calls["text"] == [len(set(batch.prompts))]
    layers = sam3.config.detr_decoder_config.num_layers
    queries = sam3.config.detr_decoder_config.num_queries
    assert outputs.logits.shape == (layers, batch.num_prompts, queries)
    assert outputs.boxes.shape == (layers, batch.num_prompts, queries, 4)
    assert outputs.presence_logits.shape == (layers, batch.num_prompts, 1)


def test_captured_final_layer_equals_model_output(shapes_dir: Path) -> None:
    loaded = create_tiny_sam3()
    task = ConceptTask(loaded.model, loaded.processor.tokenizer, Sam3ConceptLoss())
    batch = collate_concept_samples([_dataset(shapes_dir, train=False)[0]])
    with torch.no_grad():
        outputs = task.forward(batch)
        tokens = loaded.processor.tokenizer(
            batch.prompts, padding="max_length", max_length=32, return_tensors="pt"
        )
        reference = loaded.model(
            pixel_values=batch.pixel_values.expand(batch.num_prompts, -1, -1, -1),
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
        )
    torch.testing.assert_close(outputs.logits[-1], reference.pred_logits, atol=1e-5, rtol=0)
    xyxy = reference.pred_boxes
    cxcywh = torch.stack(
        [
            (xyxy[..., 0] + xyxy[..., 2]) / 2,
            (xyxy[..., 1] + xyxy[..., 3]) / 2,
            xyxy[..., 2] - xyxy[..., 0],
            xyxy[..., 3] - xyxy[..., 1],
        ],
        dim=-1,
    )
    torch.testing.assert_close(outputs.boxes[-1], cxcywh, atol=1e-5, rtol=0)
    torch.testing.assert_close(outputs.masks, reference.pred_masks, atol=1e-4, rtol=0)


def test_loss_reaches_adapter_and_validation_summarizes(shapes_dir: Path) -> None:
    loaded = create_tiny_sam3()
    model = apply_lora_to_model(loaded.model, LoraSettings(rank=4))
    task = ConceptTask(model, loaded.processor.tokenizer, Sam3ConceptLoss())
    batch = collate_concept_samples([_dataset(shapes_dir)[i] for i in range(2)])
    losses = task.compute_loss(batch)
    assert torch.isfinite(losses["loss"]) and losses["mask_focal"] > 0
    losses["loss"].backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    metrics = summarize_validation([task.validation_step(batch)])
    for key in ("val/loss", "val/miou", "val/dice", "val/fp_prompt_rate", "val/presence_accuracy"):
        assert key in metrics
        assert metrics[key] >= 0 or key == "val/loss"


def test_summarize_validation_averages_the_right_prompts():
    # Two prompts with targets (IoU 0.5 found, 0.0 missed) and two without (one silent, one
    # firing): mIoU over the first two, false-positive rate over the last two, gIoU over all.
    step = {
        "iou": torch.tensor([0.5, 0.0, 1.0, 0.0]),
        "dice": torch.tensor([0.6, 0.0, 1.0, 0.0]),
        "top1_iou": torch.tensor([0.5, 0.2, 0.0, 0.0]),
        "has_target": torch.tensor([True, True, False, False]),
        "fires": torch.tensor([True, False, False, True]),
        "presence_correct": torch.tensor([True, False, True, False]),
        "loss/loss": torch.tensor([3.0]),
    }
    metrics = summarize_validation([step])
    assert metrics["val/miou"] == pytest.approx(0.25)
    assert metrics["val/dice"] == pytest.approx(0.3)
    assert metrics["val/recall_prompts"] == pytest.approx(0.5)
    assert metrics["val/top1_iou"] == pytest.approx(0.35)
    assert metrics["val/fp_prompt_rate"] == pytest.approx(0.5)
    assert metrics["val/giou"] == pytest.approx(1.5 / 4)
    assert metrics["val/presence_accuracy"] == pytest.approx(0.5)
    assert metrics["val/loss"] == pytest.approx(3.0)
