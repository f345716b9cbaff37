from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from sam3_lora.config import LoraSettings
from sam3_lora.data.coco import CocoDataset
from sam3_lora.data.transforms import build_transforms
from sam3_lora.lora import apply_lora_to_model
from sam3_lora.models import load_sam3
from sam3_lora.tasks.concept.loss import Sam3ConceptLoss
from sam3_lora.tasks.concept.module import ConceptModel
from sam3_lora.tasks.concept.samples import (
    NEGATIVE_PROMPT_ID,
    ConceptDataset,
    collate_concept_samples,
)
from sam3_lora.tasks.concept.spec import PIXEL_MEAN, PIXEL_STD
from sam3_lora.tasks.concept.task import ConceptTask
from sam3_lora.tasks.concept.validation import summarize_validation

SAM3_NORMALISATION = {"pixel_mean": PIXEL_MEAN, "pixel_std": PIXEL_STD}


def _task(network: torch.nn.Module, loaded: object) -> ConceptTask:
    return ConceptTask(ConceptModel(network, loaded.processor.tokenizer), Sam3ConceptLoss())


def _dataset(shapes_dir: Path, train: bool = True, **kwargs: object) -> ConceptDataset:
    coco = CocoDataset.from_split_dir(shapes_dir / "train")
    return ConceptDataset(
        coco, build_transforms(224, train=train, **SAM3_NORMALISATION), train=train, **kwargs
    )


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
    loaded = load_sam3("tiny-random")
    model = apply_lora_to_model(loaded.model, LoraSettings(rank=4))
    task = _task(model, loaded)
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
    outputs = task.model(batch)
    assert calls["vision"] == [2]  # two images, once each, for all their prompts
    assert calls["text"] == [len(set(batch.prompts))]
    layers = sam3.config.detr_decoder_config.num_layers
    queries = sam3.config.detr_decoder_config.num_queries
    assert outputs.logits.shape == (layers, batch.num_prompts, queries)
    assert outputs.boxes.shape == (layers, batch.num_prompts, queries, 4)
    assert outputs.presence_logits.shape == (layers, batch.num_prompts, 1)


def test_captured_final_layer_equals_model_output(shapes_dir: Path) -> None:
    loaded = load_sam3("tiny-random")
    task = _task(loaded.model, loaded)
    batch = collate_concept_samples([_dataset(shapes_dir, train=False)[0]])
    with torch.no_grad():
        outputs = task.model(batch)
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
    loaded = load_sam3("tiny-random")
    model = apply_lora_to_model(loaded.model, LoraSettings(rank=4))
    task = _task(model, loaded)
    batch = collate_concept_samples([_dataset(shapes_dir)[i] for i in range(2)])
    losses = task.loss(task.model(batch), batch)
    assert torch.isfinite(losses["loss"]) and losses["mask_focal"] > 0
    losses["loss"].backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    with torch.no_grad():
        metrics = summarize_validation([task.validation_statistics(task.model(batch), batch)])
    for key in (
        "val/loss",
        "val/miou",
        "val/dice",
        "val/absent_fire_rate",
        "val/negative_fire_rate",
        "val/presence_accuracy",
    ):
        assert key in metrics
        assert metrics[key] >= 0 or key == "val/loss"


def test_summarize_validation_averages_the_right_prompts():
    # Two prompts with targets (IoU 0.5 found, 0.0 missed), two absent categories (one silent,
    # one firing) and one firing hard negative: mIoU over the first two, the absent-category
    # fire rate over the next two, the negative fire rate over the last, gIoU over all.
    step = {
        "iou": torch.tensor([0.5, 0.0, 1.0, 0.0, 0.0]),
        "dice": torch.tensor([0.6, 0.0, 1.0, 0.0, 0.0]),
        "top1_iou": torch.tensor([0.5, 0.2, 0.0, 0.0, 0.0]),
        "has_target": torch.tensor([True, True, False, False, False]),
        "is_negative": torch.tensor([False, False, False, False, True]),
        "fires": torch.tensor([True, False, False, True, True]),
        "presence_correct": torch.tensor([True, False, True, False, True]),
        "loss/loss": torch.tensor([3.0]),
    }
    metrics = summarize_validation([step])
    assert metrics["val/miou"] == pytest.approx(0.25)
    assert metrics["val/dice"] == pytest.approx(0.3)
    assert metrics["val/recall_prompts"] == pytest.approx(0.5)
    assert metrics["val/top1_iou"] == pytest.approx(0.35)
    assert metrics["val/absent_fire_rate"] == pytest.approx(0.5)
    assert metrics["val/negative_fire_rate"] == pytest.approx(1.0)
    assert metrics["val/giou"] == pytest.approx(1.5 / 5)
    assert metrics["val/presence_accuracy"] == pytest.approx(0.6)
    assert metrics["val/loss"] == pytest.approx(3.0)


def test_box_prompts_run_beside_text_prompts_in_one_forward(shapes_dir: Path) -> None:
    # A batch mixing text-only prompts and prompts with box exemplars gives each group exactly
    # what it gives alone: box padding never reaches the text-only prompts.
    loaded = load_sam3("tiny-random")
    model = ConceptModel(loaded.model, loaded.processor.tokenizer).eval()
    batch = collate_concept_samples([_dataset(shapes_dir, train=False)[0]])
    count = batch.num_prompts
    boxes = torch.full((count, 2, 4), -10.0)
    labels = torch.full((count, 2), -10, dtype=torch.long)
    boxes[1, 0] = torch.tensor([0.5, 0.5, 0.2, 0.2])
    labels[1, 0] = 1
    mixed = dataclasses.replace(batch, input_boxes=boxes, input_boxes_labels=labels)
    with torch.no_grad():
        together = model(mixed)
        text_only = model(batch)
        boxed = model(
            dataclasses.replace(
                batch,
                prompt_image_index=batch.prompt_image_index[1:2],
                prompts=batch.prompts[1:2],
                input_boxes=boxes[1:2, :1],
                input_boxes_labels=labels[1:2, :1],
            )
        )
    others = [i for i in range(count) if i != 1]
    torch.testing.assert_close(together.logits[:, others], text_only.logits[:, others])
    torch.testing.assert_close(together.masks[others], text_only.masks[others])
    torch.testing.assert_close(together.logits[:, 1:2], boxed.logits)
    assert not torch.allclose(together.logits[:, 1], text_only.logits[:, 1])


def test_distributed_wrapper_sees_the_whole_forward(shapes_dir: Path) -> None:
    # The module is what DDP wraps: one forward through the wrapper, gradients on the adapter.
    import torch.distributed as dist

    loaded = load_sam3("tiny-random")
    task = _task(apply_lora_to_model(loaded.model, LoraSettings(rank=4)), loaded)
    batch = collate_concept_samples([_dataset(shapes_dir)[0]])
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(task.model)
        losses = task.loss(wrapped(batch), batch)
        losses["loss"].backward()
    finally:
        dist.destroy_process_group()
    grads = [p.grad for n, p in task.model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None for g in grads)
