"""Activation (gradient) checkpointing of chosen layer classes, by ``transformers``' own mechanism.

A ``GradientCheckpointingLayer`` runs its ``forward`` inside ``torch.utils.checkpoint`` when its
``gradient_checkpointing`` flag is set. Layers that are one already (SAM3's ViT block, SAM2's
Hiera block and two-way attention block) only get the flag; plain modules become instances of a
subclass of their class and ``GradientCheckpointingLayer`` (same class name, same parameters and
state dict). Non-reentrant, RNG state kept: dropout masks and gradients equal those of a run
without it; it acts in training mode with gradients on only. Each task names its layers.
"""

from __future__ import annotations

from functools import partial

import torch
from torch.utils.checkpoint import checkpoint
from transformers.modeling_layers import GradientCheckpointingLayer

_CHECKPOINTABLE: dict[type, type] = {}


def _checkpointable(cls: type[torch.nn.Module]) -> type[torch.nn.Module]:
    """``cls`` as a ``GradientCheckpointingLayer`` (one subclass per class, same name)."""
    if issubclass(cls, GradientCheckpointingLayer):
        return cls
    if cls not in _CHECKPOINTABLE:
        _CHECKPOINTABLE[cls] = type(
            cls.__name__,
            (cls, GradientCheckpointingLayer),
            {"__module__": cls.__module__, "__doc__": cls.__doc__},
        )
    return _CHECKPOINTABLE[cls]


def checkpoint_layers(model: torch.nn.Module, layers: tuple[type[torch.nn.Module], ...]) -> int:
    """Checkpoint every module of ``model`` (PEFT-wrapped or not) that is an instance of
    ``layers``; returns how many (none is an error: the wrong layers for this model)."""
    function = partial(checkpoint, use_reentrant=False)
    count = 0
    for module in model.modules():
        if isinstance(module, layers):
            module.__class__ = _checkpointable(type(module))
            module.gradient_checkpointing = True
            module._gradient_checkpointing_func = function
            count += 1
    if not count:
        raise ValueError(f"no {', '.join(c.__name__ for c in layers)} in {type(model).__name__}")
    return count


def disable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Turn checkpointing off again on every layer that has it."""
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module.gradient_checkpointing = False
