"""Activation (gradient) checkpointing for SAM3's ViT blocks, DETR encoder / decoder layers and
the mask decoder's pixel decoder (its 288 x 288 maps at 1008 px, run once per prompt).

``transformers`` refuses ``Sam3Model.gradient_checkpointing_enable()``
(``supports_gradient_checkpointing`` is False), yet its ViT block ``Sam3ViTLayer`` is a
``GradientCheckpointingLayer``: setting the layer's ``gradient_checkpointing`` and
``_gradient_checkpointing_func`` turns on ``transformers``' own checkpointed ``forward``. The DETR
layers and the pixel decoder are plain modules; each gets the same mechanism by becoming an
instance of a subclass of its class and ``GradientCheckpointingLayer`` (same class name, same
parameters and state dict, the layer's own ``forward`` run inside ``torch.utils.checkpoint``).
Nothing is re-implemented.

Checkpointing is non-reentrant and keeps the RNG state, so dropout masks and gradients equal those
of a run without it; it acts only in training mode with gradients on. It works under PEFT (LoRA
layers sit inside the checkpointed layers) and with FSDP2 (module hooks stay outside).
"""

from __future__ import annotations

from functools import partial

import torch
from torch.utils.checkpoint import checkpoint
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.sam3.modeling_sam3 import (
    Sam3DetrDecoderLayer,
    Sam3DetrEncoderLayer,
    Sam3PixelDecoder,
    Sam3ViTLayer,
)

#: The layers whose activations are recomputed in the backward pass.
CHECKPOINTED_LAYERS: tuple[type[torch.nn.Module], ...] = (
    Sam3ViTLayer,
    Sam3DetrEncoderLayer,
    Sam3DetrDecoderLayer,
    Sam3PixelDecoder,
)

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


def enable_activation_checkpointing(
    model: torch.nn.Module, layers: tuple[type[torch.nn.Module], ...] = CHECKPOINTED_LAYERS
) -> int:
    """Checkpoint every module of ``model`` (a ``Sam3Model``, PEFT-wrapped or not) that is an
    instance of ``layers``; returns how many."""
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
