"""Activation checkpointing for the promptable task (``training.gradient_checkpointing``): the
image encoder's blocks (SAM2's Hiera ``Sam2MultiScaleBlock``; the SAM3 tracker's
``Sam3ViTLayer``) and the mask decoder's two-way attention blocks, which every corrective-click
round runs again. They are ``transformers``' own ``GradientCheckpointingLayer`` classes, so only
their switch is set (:mod:`sam3_lora.tasks.checkpointing`)."""

from __future__ import annotations

import torch
from transformers.models.sam2.modeling_sam2 import Sam2MultiScaleBlock, Sam2TwoWayAttentionBlock
from transformers.models.sam3.modeling_sam3 import Sam3ViTLayer
from transformers.models.sam3_tracker.modeling_sam3_tracker import (
    Sam3TrackerTwoWayAttentionBlock,
)

from sam3_lora.tasks.checkpointing import checkpoint_layers

#: The layers whose activations are recomputed in the backward pass (both families).
CHECKPOINTED_LAYERS: tuple[type[torch.nn.Module], ...] = (
    Sam2MultiScaleBlock,
    Sam2TwoWayAttentionBlock,
    Sam3ViTLayer,
    Sam3TrackerTwoWayAttentionBlock,
)


def enable_activation_checkpointing(model: torch.nn.Module) -> int:
    """Checkpoint the image-encoder and two-way attention blocks of ``model`` (a ``Sam2Model``
    or ``Sam3TrackerModel``, PEFT-wrapped or not); returns how many."""
    return checkpoint_layers(model, CHECKPOINTED_LAYERS)
