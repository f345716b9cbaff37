"""Peak training memory of a config: weights, gradients, AdamW states and activations.

Static parts are counted exactly from the model after LoRA injection (or after full fine-tuning
makes its components trainable). Activations come from the task's probe
(:class:`MemoryProbe`, in ``tasks/<task>/memory.py``), run three times under fake tensors at the
real resolution: 1 image x 1 prompt, 1 x 2 and 2 x 1. They fit

    activations(images, prompts per image) = fixed + per_image * images
                                             + per_prompt * images * prompts per image

which holds because the vision features are computed once per image and every prompt runs the
detector / decoder on them.

Assumptions (stated in docs/memory.md): bf16 / fp16 = autocast (what Accelerate's
``mixed_precision`` does) over fp32 master weights, except, where the probe says training does
so (:attr:`MemoryProbe.frozen_in_compute_dtype`, LoRA), frozen linear / conv weights stored
in the compute dtype (:mod:`sam3_lora.frozen_weights`); fp32 gradients and two fp32 AdamW states
per trainable parameter; QLoRA = NF4 frozen linear weights with double quantisation (about 0.52
byte per parameter) and no autocast copies of them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import torch

from sam3_lora.frozen_weights import frozen_autocast_parameters
from sam3_lora.memory.probe import Count, Precision

GIB = 1024**3
#: NF4: 4 bits per weight + one fp32 absmax per 64 weights (bitsandbytes, no double quant).
QLORA_BYTES_PER_WEIGHT = 0.5 + 4 / 64
ADAMW_STATES = 2
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


class MemoryProbe(Protocol):
    """What a task provides to count its training step (``tasks/<task>/memory.py``).

    Attributes:
        network: the model as training holds it (LoRA injected / components trainable).
        checkpointing_supported: whether the task applies ``training.gradient_checkpointing``.
        checkpointed_layers: how many layers checkpointing wraps (0 without it).
        resolution: the input size probed.
        frozen_in_compute_dtype: whether training stores the frozen linear / conv weights in
            the autocast dtype (the probe then runs with them so).
    """

    network: torch.nn.Module
    resolution: int
    checkpointing_supported: bool
    checkpointed_layers: int
    frozen_in_compute_dtype: bool

    def run(
        self, images: int, prompts_per_image: int, precision: Precision, checkpointing: bool
    ) -> Count:
        """Count one training forward + loss of ``images`` x ``prompts_per_image``."""


@dataclass(frozen=True)
class MemorySettings:
    """The training settings that change the peak (``lora-info --memory`` flags)."""

    batch_size: int = 1
    prompts_per_image: int = 4
    precision: str = "bf16"
    gradient_checkpointing: bool = False
    qlora: bool = False

    def describe(self) -> str:
        parts = [
            f"batch {self.batch_size}",
            f"{self.prompts_per_image} prompt{'s' if self.prompts_per_image > 1 else ''}/image",
            self.precision,
            f"checkpointing {'on' if self.gradient_checkpointing else 'off'}",
        ]
        return ", ".join(parts + (["QLoRA"] if self.qlora else []))


@dataclass(frozen=True)
class StaticBytes:
    """Memory that does not depend on the batch."""

    weights: int
    trainable_parameters: int
    frozen_linear_parameters: int
    gradients: int
    optimizer: int


@dataclass(frozen=True)
class ActivationFit:
    """``fixed + per_image * I + per_prompt * I * P`` (bytes), weight copies; the largest
    tensor and the largest checkpointable layer's saved bytes fitted the same way."""

    fixed: float
    per_image: float
    per_prompt: float
    weight_copies: float
    largest: tuple[float, float, float]
    largest_layer: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def at(self, images: int, prompts_per_image: int) -> float:
        return self.fixed + self.per_image * images + self.per_prompt * images * prompts_per_image

    def largest_at(self, images: int, prompts_per_image: int) -> float:
        fixed, per_image, per_prompt = self.largest
        return fixed + per_image * images + per_prompt * images * prompts_per_image

    def largest_layer_at(self, images: int, prompts_per_image: int) -> float:
        fixed, per_image, per_prompt = self.largest_layer
        return fixed + per_image * images + per_prompt * images * prompts_per_image


@dataclass(frozen=True)
class MemoryEstimate:
    """One predicted peak (bytes), by part."""

    settings: MemorySettings
    weights: float
    gradients: float
    optimizer: float
    weight_copies: float
    activations: float
    per_image: float
    per_prompt: float
    workspace: float

    @property
    def total(self) -> float:
        return (
            self.weights
            + self.gradients
            + self.optimizer
            + self.weight_copies
            + self.activations
            + self.workspace
        )


def fit_activations(probe: MemoryProbe, precision: Precision, checkpointing: bool) -> ActivationFit:
    """Run the probe at (1, 1), (1, 2) and (2, 1) and fit the linear model."""
    one = probe.run(1, 1, precision, checkpointing)
    two_prompts = probe.run(1, 2, precision, checkpointing)
    two_images = probe.run(2, 1, precision, checkpointing)

    def solve(a: float, b: float, c: float) -> tuple[float, float, float]:
        per_prompt = b - a
        per_image = c - a - per_prompt
        return a - per_image - per_prompt, per_image, per_prompt

    values = [(s.bytes - s.weight_copy_bytes) for s in (one, two_prompts, two_images)]
    fixed, per_image, per_prompt = solve(*values)
    largest = solve(one.largest, two_prompts.largest, two_images.largest)
    layer = solve(one.largest_layer, two_prompts.largest_layer, two_images.largest_layer)
    return ActivationFit(fixed, per_image, per_prompt, float(one.weight_copy_bytes), largest, layer)


def static_bytes(
    network: torch.nn.Module, qlora: bool = False, frozen_dtype: torch.dtype | None = None
) -> StaticBytes:
    """Weights (fp32 masters; NF4 for frozen linear weights under QLoRA; ``frozen_dtype``: the
    frozen linear / conv weights in that dtype), fp32 gradients and AdamW states of the
    trainable parameters."""
    linear_weights = {id(m.weight) for m in network.modules() if isinstance(m, torch.nn.Linear)}
    in_frozen_dtype = (
        {id(p) for p in frozen_autocast_parameters(network)}
        if frozen_dtype is not None and not qlora
        else set()
    )
    frozen_size = frozen_dtype.itemsize if frozen_dtype is not None else 4
    weights = trainable = frozen_linear = 0.0
    for parameter in network.parameters():
        count = parameter.numel()
        if parameter.requires_grad:
            trainable += count
        elif id(parameter) in linear_weights:
            frozen_linear += count
        if qlora and not parameter.requires_grad and id(parameter) in linear_weights:
            weights += count * QLORA_BYTES_PER_WEIGHT
        elif id(parameter) in in_frozen_dtype:
            weights += count * frozen_size
        else:
            weights += count * 4
    return StaticBytes(
        weights=int(weights),
        trainable_parameters=int(trainable),
        frozen_linear_parameters=int(frozen_linear),
        gradients=int(trainable * 4),
        optimizer=int(trainable * 4 * ADAMW_STATES),
    )


class MemoryModel:
    """The estimates of one config: static counts once, activation fits per checkpointing mode.

    Args:
        probe: the task's probe on the network of the config.
        target: ``cuda`` (what a GPU will hold) or ``cpu`` (what a CPU run here holds).
    """

    def __init__(self, probe: MemoryProbe, target: str = "cuda") -> None:
        self.probe = probe
        self.target = target
        self._fits: dict[tuple[str, bool], ActivationFit] = {}
        self._static: dict[tuple[bool, str], StaticBytes] = {}

    def static(self, qlora: bool, precision: str = "fp32") -> StaticBytes:
        """Weights, gradients and AdamW states (frozen weights in ``precision``'s dtype where
        training stores them so)."""
        key = (qlora, precision)
        if key not in self._static:
            frozen = PRECISIONS[precision] if self.probe.frozen_in_compute_dtype else None
            self._static[key] = static_bytes(self.probe.network, qlora, frozen)
        return self._static[key]

    def precision(self, precision: str) -> Precision:
        """How the probe runs a step in ``precision`` (``bf16``, ``fp16``, ``fp32``) here."""
        return Precision(PRECISIONS[precision], self.target)

    def fit(self, precision: str, checkpointing: bool) -> ActivationFit:
        key = (precision, checkpointing)
        if key not in self._fits:
            step = self.precision(precision)
            self._fits[key] = fit_activations(self.probe, step, checkpointing)
        return self._fits[key]

    def estimate(self, settings: MemorySettings) -> MemoryEstimate:
        """The predicted peak of ``settings``.

        Workspace: during the backward pass, activation gradients as large as the largest
        saved tensor exist beside it (twice its size); with checkpointing, one checkpointed
        layer's recomputed activations too: the largest layer's, where the probe measures
        them (:attr:`Count.largest_layer`), else the average layer's.
        """
        checkpointing = settings.gradient_checkpointing and self.probe.checkpointing_supported
        fit = self.fit(settings.precision, checkpointing)
        images, prompts = settings.batch_size, settings.prompts_per_image
        static = self.static(settings.qlora, settings.precision)
        workspace = 2 * fit.largest_at(images, prompts)
        if checkpointing:
            full = self.fit(settings.precision, False)
            layers = max(self.probe.checkpointed_layers, 1)
            average = max(full.at(images, prompts) - fit.at(images, prompts), 0) / layers
            workspace += max(full.largest_layer_at(images, prompts), average)
        return MemoryEstimate(
            settings=replace(settings, gradient_checkpointing=checkpointing),
            weights=static.weights,
            gradients=static.gradients,
            optimizer=static.optimizer,
            weight_copies=0.0 if settings.qlora else fit.weight_copies,
            activations=fit.at(images, prompts),
            per_image=fit.per_image + fit.per_prompt * prompts,
            per_prompt=fit.per_prompt,
            workspace=workspace,
        )
