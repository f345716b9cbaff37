"""training.gradient_checkpointing: the same loss and gradients, activations recomputed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sam3_lora.config import load_config
from sam3_lora.models import load_sam3
from sam3_lora.tasks.concept.checkpointing import (
    disable_activation_checkpointing,
    enable_activation_checkpointing,
)
from sam3_lora.tasks.concept.recipe import build_concept_datasets, build_concept_task
from tests.conftest import tiny_training_overrides


def _loss_and_gradients(
    shapes_dir: Path, tmp_path: Path, mode: str, checkpointing: bool
) -> tuple[float, dict[str, torch.Tensor], list[str]]:
    overrides = tiny_training_overrides(
        shapes_dir,
        tmp_path,
        **{
            "finetune.mode": mode,
            "training.gradient_checkpointing": checkpointing,
            "lora.dropout": 0.1,  # dropout inside the recomputed layers: the masks must match
            "lora.apply_to_detr_encoder": True,
            "lora.apply_to_detr_decoder": True,
            "data.augment": False,
        },
    )
    config = load_config(None, overrides)
    torch.manual_seed(0)
    task = build_concept_task(config, load_sam3("tiny-random"))
    train, _ = build_concept_datasets(config, 224)
    batch = task.collate([train[0], train[1]])
    sam3 = task.model.sam3
    calls: list[str] = []  # submodules run inside a checkpointed layer run again in backward
    for name, layer in (
        ("vit", sam3.vision_encoder.backbone.layers[0].attention),
        ("encoder", sam3.detr_encoder.layers[0].self_attn),
        ("decoder", sam3.detr_decoder.layers[0].self_attn),
        ("pixels", sam3.mask_decoder.pixel_decoder.conv_layers[0]),
    ):
        layer.register_forward_hook(lambda *_args, name=name: calls.append(name))
    task.model.train()
    torch.manual_seed(1)
    loss = task.loss(task.model(batch), batch)["loss"]
    loss.backward()
    gradients = {n: p.grad for n, p in task.model.named_parameters() if p.grad is not None}
    return loss.item(), gradients, calls


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_checkpointing_gives_identical_loss_and_gradients(
    shapes_dir: Path, tmp_path: Path, mode: str
) -> None:
    loss, gradients, calls = _loss_and_gradients(shapes_dir, tmp_path, mode, False)
    checked_loss, checked_gradients, checked_calls = _loss_and_gradients(
        shapes_dir, tmp_path, mode, True
    )
    assert sorted(calls) == ["decoder", "encoder", "pixels", "vit"]
    assert sorted(checked_calls) == sorted(2 * ["decoder", "encoder", "pixels", "vit"])
    assert checked_loss == loss
    assert gradients.keys() == checked_gradients.keys() and len(gradients) > 40
    for name, gradient in gradients.items():
        torch.testing.assert_close(checked_gradients[name], gradient, rtol=0, atol=0, msg=name)


def test_checkpointed_layers_keep_names_and_weights() -> None:
    model = load_sam3("tiny-random").model
    keys = list(model.state_dict())
    layer_types = {type(layer).__name__ for layer in model.detr_decoder.layers}
    # ViT, DETR encoder, decoder, pixel decoder
    assert enable_activation_checkpointing(model) == 4 + 2 + 2 + 1
    assert list(model.state_dict()) == keys
    assert {type(layer).__name__ for layer in model.detr_decoder.layers} == layer_types
    assert model.detr_encoder.layers[0].gradient_checkpointing
    assert model.mask_decoder.pixel_decoder.gradient_checkpointing
    disable_activation_checkpointing(model)
    assert not model.vision_encoder.backbone.layers[0].gradient_checkpointing
    with pytest.raises(ValueError, match="no Sam3ViTLayer"):
        enable_activation_checkpointing(torch.nn.Linear(2, 2))
