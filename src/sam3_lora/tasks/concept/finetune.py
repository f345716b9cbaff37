"""What SAM3 trains, by ``finetune.mode``: LoRA adapters, or every weight of the components that
are not frozen, with the optimizer groups of Meta's SAM3 fine-tuning config.

Meta's groups (``roboflow_v100_full_ft_100_images.yaml``): learning rate = base x ``lr_scale``
(0.1) with base 2.5e-4 for the vision backbone (the ViT and its FPN neck), 5e-5 for the language
backbone (text encoder and its projection) and 8e-4 for the rest ("transformer" parts: geometry
encoder, DETR encoder / decoder, scoring head, mask decoder). Layer-wise decay 0.9 on the ViT
trunk: block ``k`` of 32 (from 0) gets ``0.9^(32 - k)``; the patch embedding and the pre-block
LayerNorm ``0.9^33``; the position embedding 1 (Meta's ``*pos_embed*`` override), the neck 1.
Weight decay 0.1, none on biases and on ``nn.LayerNorm`` weights (Meta's rule: GroupNorm weights
of the pixel decoder are decayed).
"""

from __future__ import annotations

from functools import partial

import torch

from sam3_lora.config import Config
from sam3_lora.engine.optim import GroupRule
from sam3_lora.lora import apply_lora_to_model
from sam3_lora.tasks.concept.spec import SPEC, layer_of
from sam3_lora.tasks.finetune import GroupBuilder, mode_group_builder
from sam3_lora.tasks.spec import unwrap_model

#: ``named parameters -> AdamW param groups`` (see :mod:`sam3_lora.engine.optim`).


def prepare_network(model: torch.nn.Module, config: Config) -> torch.nn.Module:
    """LoRA mode: the PEFT model. Full mode: ``model`` itself with every parameter of the
    components outside ``finetune.freeze`` trainable and the frozen ones not."""
    if config.finetune.mode == "lora":
        return apply_lora_to_model(model, config.lora)
    frozen = set(config.finetune.freeze)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(SPEC.component_of(name) not in frozen)
    return model


def trunk_depth(model: torch.nn.Module) -> int:
    """The number of ViT blocks of a (PEFT-wrapped) ``Sam3Model``."""
    return int(unwrap_model(model).config.vision_config.backbone_config.num_hidden_layers)


def layer_norm_parameters(model: torch.nn.Module) -> frozenset[str]:
    """Names of the ``nn.LayerNorm`` weights and biases (names as ``model`` gives them)."""
    return frozenset(
        f"{module_name}.{name}"
        for module_name, module in model.named_modules()
        if isinstance(module, torch.nn.LayerNorm)
        for name, _ in module.named_parameters(recurse=False)
    )


def full_group_rule(network: torch.nn.Module, config: Config) -> GroupRule:
    """Meta's optimizer groups for ``network`` (a plain ``Sam3Model``) from ``finetune``."""
    settings = config.finetune
    norms = layer_norm_parameters(network)
    return GroupRule(
        component_of=SPEC.component_of,
        learning_rates={**SPEC.full_learning_rates, **settings.learning_rates},
        lr_scale=settings.lr_scale,
        weight_decay=settings.weight_decay,
        no_decay=lambda name, _parameter: "bias" in name or name in norms,
        layer_of=partial(layer_of, num_layers=trunk_depth(network)),
        layer_decay=settings.layer_decay,
    )


def group_builder(network: torch.nn.Module, config: Config) -> GroupBuilder:
    """``named parameters -> AdamW groups``: Meta's groups in full mode (:func:`full_group_rule`),
    the trainer's two LoRA groups otherwise."""
    return mode_group_builder(network, config, full_group_rule)
