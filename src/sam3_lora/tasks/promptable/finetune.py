"""What a promptable run trains, by ``finetune.mode``: LoRA adapters, or every weight of the
components not in ``finetune.freeze``, with the optimizer groups of Meta's SAM2.1 fine-tuning.

Meta's groups (``sam2/configs/sam2.1_training/sam2.1_hiera_b+_MOSE_finetune.yaml``,
``training/optimizer.py``): learning rate 5e-6 for everything, 3e-6 for the image encoder (trunk
and neck: ``image_encoder.*``); layer-wise decay 0.9 on the image encoder's trunk only
(``apply_to: image_encoder.trunk``), counted as Hiera's ``get_layer_id`` counts: with L blocks,
block ``k`` (from 0) is layer ``k + 1`` and gets ``0.9^(L - k)``, the patch embedding is layer 0
(``0.9^(L + 1)``), the position embeddings ``pos_embed`` / ``pos_embed_window`` 1 (the
config's ``*pos_embed*`` override), the neck 1. Weight decay 0.1, none on biases and on
``torch.nn.LayerNorm`` weights (Meta's ``LayerNorm2d`` of the mask decoder's upscaling and the
prompt encoder's mask embedding is not a ``torch.nn.LayerNorm``: decayed; transformers'
``Sam2LayerNorm`` with ``data_format="channels_first"`` is that module). Gradient clipping 0.1 and
the cosine schedule to a tenth are the preset's (``configs/sam2_full_ft.yaml``). SAM3's tracker
uses the same rates, with the ViT counted as SAM3's (``layers.k``; patch embedding and pre-block
LayerNorm layer 0).
"""

from __future__ import annotations

from functools import partial

import torch

from sam3_lora.config import Config
from sam3_lora.engine.optim import GroupRule
from sam3_lora.lora import apply_lora_to_model
from sam3_lora.tasks.finetune import GroupBuilder, mode_group_builder
from sam3_lora.tasks.promptable.spec import (
    FULL_LEARNING_RATES,
    SAM2_SPEC,
    bare_name,
    base_model,
    layer_of,
)


def trunk_depth(model: torch.nn.Module) -> int:
    """Blocks of the image encoder's trunk: Hiera's ``blocks`` or SAM3's ViT ``layers``."""
    backbone = base_model(model).vision_encoder.backbone
    blocks = getattr(backbone, "blocks", None) or getattr(backbone, "layers", None)
    if blocks is None:
        raise TypeError(f"{type(backbone).__name__}: no `blocks` / `layers` to count")
    return len(blocks)


def layer_norm_parameters(model: torch.nn.Module) -> frozenset[str]:
    """Names of the weights and biases of ``torch.nn.LayerNorm`` modules as Meta's rule sees
    them: transformers' channels-first ``Sam2LayerNorm`` (Meta's ``LayerNorm2d``) left out."""
    return frozenset(
        f"{module_name}.{name}"
        for module_name, module in model.named_modules()
        if isinstance(module, torch.nn.LayerNorm)
        and getattr(module, "data_format", "channels_last") != "channels_first"
        for name, _ in module.named_parameters(recurse=False)
    )


def prepare_network(model: torch.nn.Module, config: Config) -> torch.nn.Module:
    """LoRA mode: the PEFT model. Full mode: ``model`` with every parameter of the components
    outside ``finetune.freeze`` trainable and the frozen ones not."""
    if config.finetune.mode == "lora":
        return apply_lora_to_model(model, config.lora)
    frozen = set(config.finetune.freeze)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(SAM2_SPEC.component_of(name) not in frozen)
    return model


def full_group_rule(network: torch.nn.Module, config: Config) -> GroupRule:
    """Meta's SAM2.1 optimizer groups for ``network`` (a plain ``Sam2Model`` /
    ``Sam3TrackerModel``) from the ``finetune`` section."""
    settings = config.finetune
    norms = layer_norm_parameters(network)
    return GroupRule(
        component_of=SAM2_SPEC.component_of,  # both families: the same components
        learning_rates={**FULL_LEARNING_RATES, **settings.learning_rates},
        lr_scale=settings.lr_scale,
        weight_decay=settings.weight_decay,
        no_decay=lambda name, _parameter: "bias" in name or bare_name(name) in norms,
        layer_of=partial(layer_of, num_layers=trunk_depth(network)),
        layer_decay=settings.layer_decay,
    )


def group_builder(network: torch.nn.Module, config: Config) -> GroupBuilder:
    """``named parameters -> AdamW groups``: Meta's SAM2.1 groups in full mode
    (:func:`full_group_rule`), the trainer's two LoRA groups otherwise."""
    return mode_group_builder(network, config, full_group_rule)
