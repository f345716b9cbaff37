"""What the rest of the package needs to know about a model family, in one record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import PeftModel

#: Attribute names of the wrappers around a ``transformers`` model, in parameter names.
_WRAPPER_PREFIXES = ("module", "_orig_mod", "network")


@dataclass(frozen=True)
class TaskSpec:
    """A model family's facts and builders.

    Attributes:
        family: ``model.family`` in the config (``sam3``).
        task: the task folder (``concept``).
        model_class / processor_class: the ``transformers`` classes.
        default_model: the hub id used when the config names none.
        components: LoRA component flag -> the model's top-level module names it covers; also
            the groups of per-component learning rates and the parameter report.
        default_components: the components adapted when the config sets no flag.
        pixel_mean / pixel_std: image normalisation of the model's own processor.
        aliases: ``--model`` names that are not hub ids or folders -> what they are.
        build_alias: ``alias -> (model, processor or None)``.
        build_recipe: ``(config, loaded) -> TaskRecipe`` (the trainable task and its datasets).
        layer_of: ``(parameter name, trunk depth) -> (component, layer index, layers)`` for
            layer-wise learning-rate decay, or None for parameters outside the layered trunk.
        full_learning_rates: component -> base learning rate of full fine-tuning (before
            ``finetune.lr_scale``); ``default`` for the components without one.
        full_lr_scale: ``finetune.lr_scale`` when a config sets none (SAM3: Meta's 0.1).
        build_task: ``(config, loaded) -> task`` without datasets (``param-groups`` uses it).
        gated_hint: what to do when the default weights cannot be downloaded.
        unused_modules: modules of the ``transformers`` model that its forward never runs:
            never adapted (an adapter there would not train, and DDP refuses parameters without
            gradients).
        default_target_modules: ``lora.target_modules`` when the config sets none: per component
            the dotted name suffixes of the adapted layers; None = the schema's default (SAM3's).
        hub_ids: hub ids known to be this family's (``--model`` picks the family from them).
        hub_architectures: hub id -> the alias that builds its architecture on the meta device
            (``lora-info --memory`` estimates a hub model without downloading it).
        memory_probe: ``(config, base model, resolution) -> probe`` counting one training step
            (see :mod:`sam3_lora.memory`), or None when the task has none.
        default_layout: ``output.layout`` of LoRA runs when the config says ``auto``
            (:mod:`sam3_lora.engine.layout`); full fine-tuning always uses ``standard``.
        model_size: ``model.name_or_path -> size`` in run folder names (``large``); None: the
            name's last part.
        best_metrics: ``(label, metric)`` pairs in the names of the best folders.
        float_modules: module names (prefixes up to a ``.``) whose linear layers stay in float
            when the base is loaded in 4 bits (``model.quantization: 4bit``): heads and small
            layers, where rounding costs more than it saves.
    """

    family: str
    task: str
    model_class: type
    processor_class: type
    default_model: str
    components: dict[str, tuple[str, ...]]
    default_components: tuple[str, ...]
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]
    aliases: dict[str, str] = field(default_factory=dict)
    build_alias: Callable[[str], tuple[Any, Any]] | None = None
    build_recipe: Callable[..., Any] | None = None
    layer_of: Callable[[str, int], tuple[str, int, int] | None] | None = None
    full_learning_rates: dict[str, float] = field(default_factory=dict)
    full_lr_scale: float = 0.1
    build_task: Callable[..., Any] | None = None
    gated_hint: str = ""
    unused_modules: tuple[str, ...] = ()
    default_target_modules: dict[str, tuple[str, ...]] | None = None
    hub_ids: tuple[str, ...] = ()
    hub_architectures: dict[str, str] = field(default_factory=dict)
    memory_probe: Callable[..., Any] | None = None
    default_layout: str = "standard"
    model_size: Callable[[str], str] | None = None
    best_metrics: tuple[tuple[str, str], ...] = ()
    float_modules: tuple[str, ...] = ()

    def output_layout(self, config: Any) -> str:
        """The output layout a training run of ``config`` writes: ``output.layout``, or for
        ``auto`` :attr:`default_layout` in LoRA mode and ``standard`` in full mode."""
        kind = config.output.layout
        if kind != "auto":
            return kind
        return self.default_layout if config.finetune.mode == "lora" else "standard"

    def component_of(self, name: str) -> str:
        """The component flag that covers a module or parameter name (its top-level module
        when no flag does); the task module's ``network.`` and PEFT's ``base_model.model.``
        prefixes are looked through."""
        parts = name.split(".")
        while parts and parts[0] in _WRAPPER_PREFIXES:  # DDP, torch.compile, the task module
            parts = parts[1:]
        if parts[:2] == ["base_model", "model"]:  # PEFT
            parts = parts[2:]
        for component, modules in self.components.items():
            if parts[0] in modules:
                return component
        return parts[0]


def unwrap_model(model: Any) -> Any:
    """The ``transformers`` model inside PEFT / Accelerate / DDP / ``torch.compile`` wrappers
    and the task modules (which keep it as ``.network``)."""
    while True:
        if isinstance(model, PeftModel):
            model = model.get_base_model()
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel) or (
            hasattr(model, "module") and isinstance(model.module, torch.nn.Module)
        ):
            model = model.module
        elif hasattr(model, "network") and isinstance(model.network, torch.nn.Module):
            model = model.network
        else:
            return model


@dataclass
class TaskRecipe:
    """What a task builds from a config for training: the engine's task and the datasets."""

    task: Any
    train_dataset: Any
    valid_dataset: Any | None
    description: str = ""
