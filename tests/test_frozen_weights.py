"""Frozen base weights in the compute dtype: the same loss and LoRA gradients under autocast,
a plain PEFT adapter, a training run with validation."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from sam3_lora.config import Config, LoraSettings
from sam3_lora.data.coco import CocoDataset
from sam3_lora.data.transforms import build_transforms
from sam3_lora.frozen_weights import (
    AUTOCAST_MODULES,
    cast_frozen_weights,
    frozen_weights_dtype,
    original_weights,
)
from sam3_lora.lora import apply_lora_to_model, save_lora_weights
from sam3_lora.models import load_sam3
from sam3_lora.tasks.concept.loss import Sam3ConceptLoss
from sam3_lora.tasks.concept.module import ConceptModel
from sam3_lora.tasks.concept.samples import ConceptDataset, collate_concept_samples
from sam3_lora.tasks.concept.spec import PIXEL_MEAN, PIXEL_STD
from sam3_lora.tasks.concept.task import ConceptTask
from sam3_lora.training import SAM3TrainerNative
from tests.conftest import tiny_training_overrides


def _config(**model: object) -> Config:
    config = Config()
    for key, value in model.items():
        section, name = key.split(".")
        setattr(getattr(config, section), name, value)
    return config


@pytest.mark.parametrize(
    ("settings", "precision", "expected"),
    [
        ({}, "bf16", torch.bfloat16),
        ({}, "fp16", torch.float16),
        ({}, "no", None),
        ({"model.frozen_weights_dtype": "float32"}, "bf16", None),
        ({"finetune.mode": "full"}, "bf16", None),
        ({"model.quantization": "4bit"}, "bf16", None),
    ],
)
def test_the_compute_dtype_only_for_lora_in_mixed_precision(
    settings: dict, precision: str, expected: torch.dtype | None
) -> None:
    assert frozen_weights_dtype(_config(**settings), precision) is expected


def test_fsdp_keeps_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert frozen_weights_dtype(Config(), "bf16") is None


def test_auto_mixed_precision_on_the_cpu_keeps_float32() -> None:
    if torch.cuda.is_available():
        pytest.skip("auto is bf16 on a GPU")
    assert frozen_weights_dtype(Config()) is None


def _lora_task(seed: int = 0) -> tuple[ConceptTask, object]:
    loaded = load_sam3("tiny-random")
    network = apply_lora_to_model(loaded.model, LoraSettings(rank=4, dropout=0.1))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-zero B: the A matrices get gradients too
        for name, parameter in network.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    task = ConceptTask(ConceptModel(network, loaded.processor.tokenizer), Sam3ConceptLoss())
    return task, loaded


def _batch(shapes_dir: Path):
    coco = CocoDataset.from_split_dir(shapes_dir / "train")
    transform = build_transforms(224, train=False, pixel_mean=PIXEL_MEAN, pixel_std=PIXEL_STD)
    dataset = ConceptDataset(coco, transform, train=True, num_negative_prompts=1, seed=0)
    return collate_concept_samples([dataset[i] for i in range(2)])


def _loss_and_lora_gradients(task: ConceptTask, batch) -> tuple[torch.Tensor, dict]:
    task.model.train()
    torch.manual_seed(0)  # the same dropout masks in both runs
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = task.loss(task.model(batch), batch)["loss"]
    loss.backward()
    gradients = {
        name: p.grad.clone() for name, p in task.network.named_parameters() if p.requires_grad
    }
    return loss.detach(), gradients


def test_bf16_frozen_weights_give_the_same_loss_and_lora_gradients(shapes_dir: Path) -> None:
    task, _ = _lora_task()
    cast_task = copy.deepcopy(task)
    cast = cast_frozen_weights(cast_task.network, torch.bfloat16)
    assert cast > 0.5 * sum(p.numel() for p in task.network.parameters())
    for module in cast_task.network.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if parameter.requires_grad:
                assert parameter.dtype == torch.float32, name  # LoRA weights
            elif isinstance(module, AUTOCAST_MODULES):
                assert parameter.dtype == torch.bfloat16, name
            else:
                assert parameter.dtype == torch.float32, name  # norms, embeddings, ...
    batch = _batch(shapes_dir)
    loss, gradients = _loss_and_lora_gradients(task, batch)
    cast_loss, cast_gradients = _loss_and_lora_gradients(cast_task, batch)
    assert torch.isfinite(loss)
    assert torch.equal(loss, cast_loss)
    assert gradients.keys() == cast_gradients.keys() and len(gradients) > 40
    for name, gradient in gradients.items():
        assert cast_gradients[name].dtype == torch.float32
        assert torch.equal(gradient, cast_gradients[name]), name
    assert sum(bool(g.abs().sum() > 0) for g in gradients.values()) > 0.9 * len(gradients)


def test_the_adapter_stays_fp32_and_loads_on_the_float_base(tmp_path: Path) -> None:
    task, _ = _lora_task(seed=1)
    cast_frozen_weights(task.network, torch.bfloat16)
    folder = save_lora_weights(task.network, tmp_path / "adapter")
    saved = load_file(str(folder / "adapter_model.safetensors"))
    assert saved and all(t.dtype == torch.float32 for t in saved.values())
    base = load_sam3("tiny-random").model
    loaded = PeftModel.from_pretrained(base, folder)
    trained = dict(task.network.named_parameters())
    for name, parameter in loaded.named_parameters():
        if "lora_" in name:
            assert parameter.dtype == torch.float32
            assert torch.equal(parameter, trained[name]), name
        else:
            assert parameter.dtype == torch.float32, name


def test_a_bf16_run_trains_validates_and_saves(shapes_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "run"
    overrides = tiny_training_overrides(
        shapes_dir,
        output,
        **{
            "training.mixed_precision": "bf16",
            "training.max_steps": 2,
            "training.eval_steps": 2,
            "training.eval_at_start": True,
            "data.verify_negatives": True,
        },
    )
    trainer = SAM3TrainerNative(None, overrides)
    summary = trainer.train()
    network = trainer.trainer.task.network
    dtypes = {p.dtype for p in network.parameters() if not p.requires_grad}
    assert dtypes == {torch.bfloat16, torch.float32}
    assert all(p.dtype == torch.float32 for p in network.parameters() if p.requires_grad)
    assert summary["steps"] == 2
    assert (output / "final" / "adapter_model.safetensors").is_file()


def test_sam2_bf16_frozen_weights_give_the_same_loss_and_lora_gradients(
    shapes_dir: Path,
) -> None:
    from sam3_lora.config import load_config
    from sam3_lora.tasks.promptable.recipe import build_promptable_task
    from sam3_lora.tasks.promptable.samples import PromptDataset, collate_prompt_samples
    from sam3_lora.tasks.promptable.spec import ImageInput
    from sam3_lora.tasks.promptable.tiny import create_tiny_sam2

    loaded = create_tiny_sam2(seed=0)
    config = load_config("sam2_lora", {"model.name_or_path": "tiny-random", "lora.dropout": 0.0})
    task = build_promptable_task(config, loaded)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-zero B: the A matrices get gradients too
        for name, parameter in task.network.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    cast_task = copy.deepcopy(task)
    assert cast_frozen_weights(cast_task.network, torch.bfloat16) > 0.5 * sum(
        p.numel() for p in task.network.parameters()
    )
    coco = CocoDataset.from_split_dir(shapes_dir / "train")
    image_input = ImageInput.from_processor(loaded.processor)
    samples = PromptDataset(coco, image_input, train=True, seed=0)
    batch = collate_prompt_samples([samples[0], samples[1]])

    def loss_and_gradients(run_task) -> tuple[torch.Tensor, dict]:
        run_task.model.train()
        torch.manual_seed(0)  # the same corrective clicks
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = run_task.loss(run_task.model(batch), batch)["loss"]
        loss.backward()
        named = run_task.network.named_parameters()
        return loss.detach(), {n: p.grad.clone() for n, p in named if p.requires_grad}

    loss, gradients = loss_and_gradients(task)
    cast_loss, cast_gradients = loss_and_gradients(cast_task)
    assert torch.isfinite(loss) and torch.equal(loss, cast_loss)
    assert gradients.keys() == cast_gradients.keys() and len(gradients) > 40
    for name, gradient in gradients.items():
        assert torch.equal(gradient, cast_gradients[name]), name


def test_the_sam2_recipe_stores_frozen_weights_in_bf16(shapes_dir: Path) -> None:
    from sam3_lora.config import load_config
    from sam3_lora.models import load_model
    from sam3_lora.tasks.promptable.recipe import build_promptable_recipe

    overrides = {
        "model.name_or_path": "tiny-random",
        "data.train": str(shapes_dir / "train"),
        "data.valid": None,
        "training.mixed_precision": "bf16",
    }
    recipe = build_promptable_recipe(
        load_config("sam2_lora", overrides), load_model("tiny-random", "sam2")
    )
    network = recipe.task.network
    assert {p.dtype for p in network.parameters() if not p.requires_grad} == {
        torch.bfloat16,
        torch.float32,
    }
    assert all(p.dtype == torch.float32 for p in network.parameters() if p.requires_grad)
    # The sam2_lora layout (auto) writes merged models: the fp32 originals are kept on the CPU;
    # the standard layout writes none, so it keeps no copy.
    kept = original_weights(network)
    assert kept and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in kept.values())
    standard = build_promptable_recipe(
        load_config("sam2_lora", {**overrides, "output.layout": "standard"}),
        load_model("tiny-random", "sam2"),
    )
    assert not original_weights(standard.task.network)


def test_a_merge_during_training_folds_the_adapter_into_the_float_base() -> None:
    """The sam2_lora layout saves merged models while training with bf16 frozen weights: the
    merge uses the fp32 base kept on the CPU, so it equals the merge of an fp32-master run."""
    from sam3_lora.config import load_config
    from sam3_lora.lora import merged_state_dict
    from sam3_lora.tasks.promptable.recipe import build_promptable_task
    from sam3_lora.tasks.promptable.tiny import create_tiny_sam2

    config = load_config("sam2_lora", {"model.name_or_path": "tiny-random"})
    task = build_promptable_task(config, create_tiny_sam2(seed=0))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in task.network.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    expected = merged_state_dict(task.network)
    cast_frozen_weights(task.network, torch.bfloat16, keep_originals=True)
    merged = merged_state_dict(task.network)
    assert merged.keys() == expected.keys()
    for key, tensor in expected.items():
        assert merged[key].dtype == tensor.dtype and torch.equal(merged[key], tensor), key
    for parameter in task.network.parameters():  # without them the bf16 copies are merged
        parameter.__dict__.pop("weight_before_cast", None)
    assert any(t.dtype == torch.bfloat16 for t in merged_state_dict(task.network).values())
