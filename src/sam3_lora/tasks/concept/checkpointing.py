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

import torch
from transformers.models.sam3.modeling_sam3 import (
    Sam3DetrDecoderLayer,
    Sam3DetrEncoderLayer,
    Sam3PixelDecoder,
    Sam3ViTLayer,
)

from sam3_lora.tasks.checkpointing import checkpoint_layers, disable_activation_checkpointing

__all__ = [
    "CHECKPOINTED_LAYERS",
    "disable_activation_checkpointing",
    "enable_activation_checkpointing",
]

#: The layers whose activations are recomputed in the backward pass.
CHECKPOINTED_LAYERS: tuple[type[torch.nn.Module], ...] = (
    Sam3ViTLayer,
    Sam3DetrEncoderLayer,
    Sam3DetrDecoderLayer,
    Sam3PixelDecoder,
)


def enable_activation_checkpointing(
    model: torch.nn.Module, layers: tuple[type[torch.nn.Module], ...] = CHECKPOINTED_LAYERS
) -> int:
    """Checkpoint SAM3's :data:`CHECKPOINTED_LAYERS` (or ``layers``) in ``model`` (a
    ``Sam3Model``, PEFT-wrapped or not); returns how many."""
    return checkpoint_layers(model, layers)
