"""What every task's fine-tuning modes share: the optimizer groups of a mode, and its one-line
description. Each task supplies its full-mode rule (its components, learning rates, layers)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

import torch

from sam3_lora.config import Config
from sam3_lora.engine.optim import GroupRule, NamedParameters, decay_groups, parameter_groups

logger = logging.getLogger(__name__)

GroupBuilder = Callable[[NamedParameters], list[dict]]


def mode_group_builder(
    network: torch.nn.Module,
    config: Config,
    full_rule: Callable[[torch.nn.Module, Config], GroupRule],
) -> GroupBuilder:
    """``named parameters -> AdamW groups`` for the mode of ``config``: ``full_rule``'s groups in
    full mode (the task's per-component learning rates and layer decay), the trainer's two LoRA
    groups (decay / no decay at ``training.learning_rate``) otherwise."""
    if config.finetune.mode == "full":
        if {"learning_rate", "weight_decay"} & config.training.model_fields_set:
            logger.warning(
                "finetune.mode full: training.learning_rate / training.weight_decay are not used; "
                "set finetune.learning_rates, finetune.lr_scale and finetune.weight_decay"
            )
        return partial(parameter_groups, rule=full_rule(network, config))
    return partial(
        decay_groups,
        learning_rate=config.training.learning_rate,
        weight_decay=config.training.weight_decay,
    )


def describe_mode(config: Config) -> str:
    """One line: what a run of ``config`` trains."""
    if config.finetune.mode == "lora":
        return f"LoRA rank {config.lora.rank}"
    frozen = ", ".join(config.finetune.freeze) or "nothing"
    return f"full fine-tuning (frozen: {frozen})"
