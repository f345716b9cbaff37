"""Frozen base weights stored in the compute dtype of mixed precision (LoRA training).

Under bf16 / fp16 autocast every ``nn.Linear`` / convolution casts its weight and bias to the
compute dtype before the matmul, so a frozen fp32 master only costs memory: 4 bytes per
weight plus, per step, the low-precision copy autocast makes (and autograd keeps for the
backward pass). Stored in the compute dtype from the start, the same rounded values reach the
same kernels: the forward, the loss and the LoRA gradients are unchanged, bit for bit. LoRA
weights (trainable) stay fp32; norms, embeddings and every other parameter autocast does not
cast stay fp32 too (their ops run in fp32 or in the dtype of their weight).

Not used for full fine-tuning (the weights are trained), QLoRA (NF4 storage of its own), DoRA
(its weight norm reads the base weight outside a matmul) or under FSDP (``accelerate launch``
with an FSDP config: its parameter groups expect one dtype); ``model.frozen_weights_dtype:
float32`` turns it off. The cast model runs under autocast only (as the trainer runs it).
"""

from __future__ import annotations

import logging
import os

import torch

from sam3_lora.config import Config
from sam3_lora.engine.schedules import resolve_mixed_precision

logger = logging.getLogger(__name__)

#: Modules whose weight and bias autocast casts to the compute dtype for every use.
AUTOCAST_MODULES: tuple[type[torch.nn.Module], ...] = (
    torch.nn.Linear,
    torch.nn.Conv1d,
    torch.nn.Conv2d,
    torch.nn.Conv3d,
    torch.nn.ConvTranspose1d,
    torch.nn.ConvTranspose2d,
    torch.nn.ConvTranspose3d,
)
COMPUTE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def casts_frozen_weights(config: Config) -> bool:
    """Whether a run of ``config`` stores frozen weights in the compute dtype (LoRA mode, no
    QLoRA, no DoRA, ``model.frozen_weights_dtype: auto``), when it trains in mixed precision."""
    return (
        config.model.frozen_weights_dtype == "auto"
        and config.finetune.mode == "lora"
        and config.model.quantization == "none"
        and not config.lora.use_dora
    )


def frozen_weights_dtype(config: Config, mixed_precision: str | None = None) -> torch.dtype | None:
    """The dtype a training run of ``config`` stores its frozen weights in; None: as loaded
    (fp32). ``mixed_precision``: ``bf16`` / ``fp16`` / ``no`` (default: the trainer's
    resolution of ``training.mixed_precision``, ``auto`` = bf16 on a GPU, fp32 on CPU)."""
    if not casts_frozen_weights(config) or under_fsdp():
        return None
    precision = mixed_precision or resolve_mixed_precision(config.training.mixed_precision)
    return COMPUTE_DTYPES.get(precision)


def under_fsdp() -> bool:
    """Whether this process was launched with an FSDP config (``accelerate launch`` says so in
    ``ACCELERATE_USE_FSDP``)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")


def frozen_autocast_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The frozen floating-point weights and biases of ``model``'s :data:`AUTOCAST_MODULES`
    (PEFT's base layers; not its LoRA weights, which are trained)."""
    found: dict[int, torch.nn.Parameter] = {}
    for module in model.modules():
        if isinstance(module, AUTOCAST_MODULES):
            for parameter in module.parameters(recurse=False):
                if not parameter.requires_grad and parameter.is_floating_point():
                    found[id(parameter)] = parameter
    return list(found.values())


def cast_frozen_weights(
    model: torch.nn.Module, dtype: torch.dtype, keep_originals: bool = False
) -> int:
    """Store :func:`frozen_autocast_parameters` of ``model`` in ``dtype``, in place; returns
    how many parameters (elements) were cast. ``keep_originals``: a CPU copy of each cast
    weight as it was stays with the parameter, for :func:`original_weights` (a merge during
    training folds the adapter into the float base, not into its rounded copy)."""
    count = 0
    with torch.no_grad():
        for parameter in frozen_autocast_parameters(model):
            if parameter.dtype != dtype:
                if keep_originals and not hasattr(parameter, _ORIGINAL):
                    setattr(parameter, _ORIGINAL, parameter.data.to("cpu", copy=True))
                parameter.data = parameter.data.to(dtype)
                count += parameter.numel()
    return count


_ORIGINAL = "weight_before_cast"


def original_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s parameters as they were before :func:`cast_frozen_weights` with
    ``keep_originals``, by parameter name; empty when none was kept."""
    return {
        name: getattr(parameter, _ORIGINAL)
        for name, parameter in model.named_parameters()
        if hasattr(parameter, _ORIGINAL)
    }


def store_frozen_weights_for_training(
    model: torch.nn.Module, config: Config, keep_originals: bool = False
) -> int:
    """Cast ``model``'s frozen linear / conv weights to the dtype a training run of ``config``
    stores them in (:func:`frozen_weights_dtype`), logging it; returns the elements cast.
    ``keep_originals``: see :func:`cast_frozen_weights`."""
    dtype = frozen_weights_dtype(config)
    if dtype is None:
        return 0
    count = cast_frozen_weights(model, dtype, keep_originals)
    logger.info("frozen linear / conv weights stored in %s: %d parameters", dtype, count)
    return count
