"""PromptableModel on tiny real models: steps, shapes, transformers equivalence, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

from sam3_lora.tasks.promptable.loss import PromptableLoss
from sam3_lora.tasks.promptable.module import NO_OBJECT_SCORE, PromptableModel
from sam3_lora.tasks.promptable.prompts import center_clicks, mask_boxes
from sam3_lora.tasks.promptable.samples import PromptBatch
from sam3_lora.tasks.promptable.spec import lora_target_modules, unused_parameter_names
from sam3_lora.tasks.promptable.tiny import create_tiny_sam2, create_tiny_sam3_tracker

CREATE = {"sam2": create_tiny_sam2, "sam3_tracker": create_tiny_sam3_tracker}


@pytest.fixture(autouse=True)
def one_thread() -> object:
    """One intra-op thread: two contend on a shared 2-core machine and slow tiny models 50x."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_batch(size: int, seed: int = 1, objects: int = 4) -> PromptBatch:
    """A batch of two random images; rectangles of different shapes as targets (image 0 holds
    the first ``objects - 1``, image 1 the last)."""
    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(objects, size, size, dtype=torch.bool)
    for k in range(objects):
        y0, x0 = 4 + 9 * k % (size // 2), 6 + 13 * k % (size // 2)
        masks[k, y0 : y0 + size // 4 + 3 * k, x0 : x0 + size // 3] = True
    return PromptBatch(
        pixel_values=torch.randn(2, 3, size, size, generator=generator),
        object_image_index=torch.tensor([0] * (objects - 1) + [1]),
        target_masks=masks,
        target_boxes=mask_boxes(masks),
        category_ids=torch.ones(objects, dtype=torch.long),
        annotation_ids=torch.arange(objects),
        image_indices=[0, 1],
        original_sizes=[(size, size)] * 2,
        prompt_seed=seed,
    )


def _first_prompts(outputs: object) -> dict[int, list[float]]:
    """Each object's first prompt (flattened points and labels)."""
    return {
        int(row): [*p.points[i].flatten().tolist(), *p.labels[i].tolist()]
        for p in outputs.steps[0]
        for i, row in enumerate(p.object_index)
    }


def _size(model: torch.nn.Module) -> int:
    return model.config.prompt_encoder_config.image_size


@pytest.mark.parametrize("family", list(CREATE))
def test_training_steps_cover_every_object_with_meta_mask_counts(family: str) -> None:
    model = CREATE[family]().model
    module = PromptableModel(model, correction_rounds=3).train()
    batch = make_batch(_size(model))
    outputs = module(batch)
    assert len(outputs.steps) == 4 and outputs.num_objects == 4
    low_res = 4 * model.prompt_encoder.image_embedding_size[0]
    for step, predictions in enumerate(outputs.steps):
        covered = torch.cat([p.object_index for p in predictions]).sort().values
        assert covered.tolist() == [0, 1, 2, 3]
        for p in predictions:
            clicks_only = (p.labels <= 1).all()
            points = p.points.shape[1]
            assert points == step + (1 if clicks_only else 2)
            assert p.num_masks == (3 if points == 1 else 1)  # multimask only for one point
            assert p.mask_logits.shape == (len(p.object_index), p.num_masks, low_res, low_res)
            assert p.iou_scores.shape == (len(p.object_index), p.num_masks)
            assert p.object_score_logits.shape == (len(p.object_index), 1)
            assert ((p.iou_scores >= 0) & (p.iou_scores <= 1)).all()
    losses = PromptableLoss()(outputs.steps, batch.target_masks)
    assert torch.isfinite(losses["loss"])


@pytest.mark.parametrize("family", list(CREATE))
def test_eval_predictions_equal_the_transformers_forward(family: str) -> None:
    model = CREATE[family]().model
    with torch.no_grad():  # random mask logits are ~1e-5: scale them so that atol means something
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.proj_out.weight.mul_(1e4)
    module = PromptableModel(model).eval()
    batch = make_batch(_size(model))
    image_of = batch.object_image_index
    with torch.no_grad():
        (box,) = module(batch, prompt="box").final()
        reference = model(
            pixel_values=batch.pixel_values[image_of],
            input_boxes=mask_boxes(batch.target_masks)[:, None],
            multimask_output=False,
        )
        assert reference.pred_masks.abs().mean() > 1e-2
        torch.testing.assert_close(box.mask_logits, reference.pred_masks[:, 0], atol=1e-4, rtol=0)
        torch.testing.assert_close(box.iou_scores, reference.iou_scores[:, 0], atol=1e-5, rtol=0)

        (point,) = module(batch, prompt="point").final()
        centres, labels = center_clicks(batch.target_masks)
        reference = model(
            pixel_values=batch.pixel_values[image_of],
            input_points=centres[:, None, None],
            input_labels=labels[:, None, None],
        )
        assert point.num_masks == 3
        torch.testing.assert_close(point.mask_logits, reference.pred_masks[:, 0], atol=1e-4, rtol=0)
        torch.testing.assert_close(
            point.object_score_logits, reference.object_score_logits[:, 0], atol=1e-5, rtol=0
        )


def test_eval_is_deterministic_and_center_clicks_correct_the_error() -> None:
    model = create_tiny_sam2().model
    module = PromptableModel(model, eval_prompt="point", eval_correction_clicks=2).eval()
    batch = make_batch(128)
    with torch.no_grad():
        first, second = module(batch), module(batch)
    assert len(first.steps) == 3
    for a, b in zip(first.steps, second.steps, strict=True):
        assert torch.equal(a[0].points, b[0].points) and torch.equal(
            a[0].mask_logits, b[0].mask_logits
        )
    previous = first.steps[1][0]
    predicted = F.interpolate(
        previous.best_mask_logits()[:, None], size=(128, 128), mode="bilinear"
    )
    expected = center_clicks(batch.target_masks, predicted[:, 0] > 0)
    assert torch.equal(first.steps[2][0].points[:, -1], expected[0])
    assert torch.equal(first.steps[2][0].labels[:, -1], expected[1])


def test_training_prompts_are_seeded_and_clicks_land_in_error_regions() -> None:
    model = create_tiny_sam2().model
    module = PromptableModel(
        model, correction_rounds=3, gt_click_probability=0.0, gate_masks_by_object_score=False
    ).train()
    batch = make_batch(128, seed=7)
    with torch.no_grad():
        outputs, again = module(batch), module(batch)
        other = module(make_batch(128, seed=8))
    for a, b in zip(outputs.steps, again.steps, strict=True):
        for p, q in zip(a, b, strict=True):
            assert torch.equal(p.points, q.points) and torch.equal(p.mask_logits, q.mask_logits)
    assert _first_prompts(outputs) != _first_prompts(other)

    targets = batch.target_masks
    for before, after in zip(outputs.steps[:-1], outputs.steps[1:], strict=True):
        for previous, current in zip(before, after, strict=True):
            truth = targets[previous.object_index]
            logits = F.interpolate(
                previous.best_mask_logits()[:, None], size=(128, 128), mode="bilinear"
            )[:, 0]
            predicted = logits > 0
            x, y = current.points[:, -1].long().unbind(1)
            rows = torch.arange(len(x))
            label = current.labels[:, -1]
            in_fn = (truth & ~predicted)[rows, y, x]
            in_fp = (~truth & predicted)[rows, y, x]
            perfect = ~(truth ^ predicted).flatten(1).any(1)
            assert (
                (in_fn & (label == 1)) | (in_fp & (label == 0)) | (perfect & (label == 0))
            ).all()


@pytest.mark.parametrize("family", list(CREATE))
def test_full_fine_tuning_reaches_every_parameter_but_the_known_unused(family: str) -> None:
    model = CREATE[family]().model
    module = PromptableModel(model, correction_rounds=2).train()
    batch = make_batch(_size(model))
    PromptableLoss()(module(batch).steps, batch.target_masks)["loss"].backward()
    without = sorted(n for n, p in model.named_parameters() if p.grad is None)
    assert without == sorted(unused_parameter_names(model))
    assert bool(without) == (family == "sam3_tracker")


def test_one_vision_call_per_forward_shared_by_all_objects() -> None:
    model = create_tiny_sam2().model
    module = PromptableModel(model, correction_rounds=7).train()
    calls = []
    handle = model.vision_encoder.register_forward_hook(
        lambda _m, args, _o: calls.append(args[0].shape[0])
    )
    try:
        outputs = module(make_batch(128))
    finally:
        handle.remove()
    assert calls == [2]  # two images, once, for 4 objects x 8 steps
    assert len(outputs.steps) == 8


def test_gradients_reach_lora_in_the_image_encoder_through_peft() -> None:
    model = create_tiny_sam2().model
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=lora_target_modules(model))
    )
    module = PromptableModel(peft_model, correction_rounds=2).train()
    batch = make_batch(128)
    losses = PromptableLoss()(module(batch).steps, batch.target_masks)
    losses["loss"].backward()
    lora = {n: p for n, p in peft_model.named_parameters() if "lora_B" in n}
    encoder = [n for n in lora if ".vision_encoder." in n]
    decoder = [n for n in lora if ".mask_decoder." in n]
    assert encoder and decoder
    assert all(lora[n].grad is not None and lora[n].grad.abs().sum() > 0 for n in encoder)
    assert all(lora[n].grad is not None for n in decoder)
    frozen = [p for n, p in peft_model.named_parameters() if "lora_" not in n]
    assert all(p.grad is None for p in frozen)


def test_mask_feedback_and_object_score_gating() -> None:
    model = create_tiny_sam2().model
    batch = make_batch(128)
    with torch.no_grad():
        fed = PromptableModel(model, correction_rounds=1, gate_masks_by_object_score=False).train()
        unfed = PromptableModel(
            model, correction_rounds=1, feed_back_masks=False, gate_masks_by_object_score=False
        ).train()
        a, b = fed(batch), unfed(batch)
        assert all(
            torch.equal(p.mask_logits, q.mask_logits)
            for p, q in zip(a.steps[0], b.steps[0], strict=True)
        )
        assert any(
            not torch.allclose(p.mask_logits, q.mask_logits)
            for p, q in zip(a.steps[1], b.steps[1], strict=True)
        )

        model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(-50.0)  # "no object" everywhere
        gated = PromptableModel(model, correction_rounds=1).train()(batch)
        assert all((p.mask_logits == NO_OBJECT_SCORE).all() for s in gated.steps for p in s)
        evaluated = PromptableModel(model).eval()(batch)
        assert (evaluated.final()[0].mask_logits != NO_OBJECT_SCORE).all()


def test_batch_without_objects_and_bad_arguments() -> None:
    model = create_tiny_sam2().model
    module = PromptableModel(model).train()
    empty = make_batch(128)
    empty.object_image_index = empty.object_image_index[:0]
    empty.target_masks = empty.target_masks[:0]
    assert module(empty).steps == []
    with pytest.raises(ValueError, match="prompt must be one of"):
        module(make_batch(128), prompt="scribble")
    with pytest.raises(ValueError, match="eval_prompt"):
        PromptableModel(model, eval_prompt="mask")
    with pytest.raises(TypeError, match="Sam2Model"):
        PromptableModel(torch.nn.Linear(2, 2))


def test_ddp_wraps_the_whole_forward(tmp_path: object) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    model = create_tiny_sam2().model
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=lora_target_modules(model)))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(PromptableModel(peft_model, correction_rounds=2).train())
        batch = make_batch(128)
        losses = PromptableLoss()(wrapped(batch).steps, batch.target_masks)
        losses["loss"].backward()
        grads = [p.grad for n, p in peft_model.named_parameters() if "lora_B" in n]
        assert grads and all(g is not None for g in grads)
    finally:
        dist.destroy_process_group()
