"""``training.compile``: ``torch.compile`` on the vision encoder, the heavy part of every task.

The vision encoder's trunk (SAM3's ViT, SAM2's Hiera) and its FPN neck see one fixed image size,
so each compiles into one graph without recompiles; the rest of the forward (text, DETR,
prompt-dependent decoding, the Python bookkeeping of prompts) changes shape every batch and
stays eager, as does the encoder's own thin ``forward`` (hooks on it stay outside the graphs).
``nn.Module.compile`` compiles in place: parameter names, adapters and checkpoints are unchanged.
"""

from __future__ import annotations

import logging

import torch

from sam3_lora.errors import ConfigError
from sam3_lora.tasks.spec import unwrap_model

logger = logging.getLogger(__name__)


def compile_vision_encoder(network: torch.nn.Module) -> list[str]:
    """Compile the parts of ``network``'s ``vision_encoder`` (``backbone``, ``neck``: its
    children with parameters) in place, PEFT / task wrappers looked through; their names.

    Raises:
        ConfigError: the model has no ``vision_encoder``.
    """
    encoder = getattr(unwrap_model(network), "vision_encoder", None)
    if not isinstance(encoder, torch.nn.Module):
        raise ConfigError(
            f"training.compile: {type(unwrap_model(network)).__name__} has no vision_encoder to "
            "compile; set training.compile: false"
        )
    parts = [
        (name, child)
        for name, child in encoder.named_children()
        if any(True for _ in child.parameters())
    ]
    for _, child in parts:
        child.compile()
    names = [f"vision_encoder.{name}" for name, _ in parts]
    logger.info("training.compile: %s compiled (the first step compiles)", ", ".join(names))
    return names
