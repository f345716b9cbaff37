"""LoRA through PEFT: component flags -> ``LoraConfig``; parameter report; save / load / merge.

Component flags (``lora.apply_to_<component>``) are mapped onto module names through the task's
component map (``TaskSpec.components``; SAM3's in ``tasks/concept/spec.py``). Adapters are saved
in PEFT's format (``adapter_config.json`` + ``adapter_model.safetensors``) and load with plain
``peft.PeftModel.from_pretrained``; merged models with the task's plain ``from_pretrained``.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from rich.table import Table
from safetensors import safe_open

from sam3_lora.config import LoraSettings
from sam3_lora.errors import AdapterError, ConfigError
from sam3_lora.tasks import TaskSpec, spec_for_model

logger = logging.getLogger(__name__)

#: The SAM3-LoRA name for the LoRA settings.
LoRAConfig = LoraSettings

#: Names from the SAM3-LoRA docs -> the names of transformers' SAM3 modules.
TARGET_ALIASES = {
    "out_proj": ("o_proj", "out_proj"),
    "o_proj": ("o_proj", "out_proj"),
    "linear1": ("fc1",),
    "linear2": ("fc2",),
}
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class LoraTargets:
    """The modules a LoRA selection adapts."""

    module_names: tuple[str, ...]
    regex: str
    spec: TaskSpec

    def by_component(self) -> dict[str, list[str]]:
        grouped: dict[str, list[str]] = {name: [] for name in self.spec.components}
        for name in self.module_names:
            grouped[self.spec.component_of(name)].append(name)
        return grouped


def _linear_modules(
    model: torch.nn.Module, components: list[str], spec: TaskSpec
) -> dict[str, torch.nn.Linear]:
    unused = spec.unused_modules
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and spec.component_of(name) in components
        and not any(name == u or name.endswith("." + u) for u in unused)
    }


def resolve_targets(
    model: torch.nn.Module, settings: LoraSettings, spec: TaskSpec | None = None
) -> LoraTargets:
    """Map component flags and target names onto the model's ``nn.Linear`` modules.

    A target is a layer name (``q_proj``, an alias such as ``out_proj``), a dotted name end
    (``attn.qkv``: only layers whose name ends with it) or ``all``. ``target_modules`` is a list
    for every selected component, or a mapping component -> list. Unset on a bare
    :class:`LoraSettings`, it is the family's (``TaskSpec.default_target_modules``).

    Args:
        spec: the model's task spec (default: found from the model's class).

    Raises:
        ConfigError: no component selected, a selected component without linear layers or
            (mapping) without an entry, or a target name that matches no layer.
    """
    spec = spec or spec_for_model(model)
    components = settings.components(spec.components)
    if not components:
        flags = ", ".join(f"lora.apply_to_{name}" for name in spec.components)
        raise ConfigError(f"no LoRA component selected: set at least one of {flags} to true")
    linears = _linear_modules(model, components, spec)
    for component in components:
        if not any(spec.component_of(name) == component for name in linears):
            raise ConfigError(
                f"lora.apply_to_{component}: `{component}` has no linear layer for LoRA; turn the "
                f"flag off, or train it whole with lora.modules_to_save: [{component}]"
            )
    targets = settings.target_modules
    if "target_modules" not in settings.model_fields_set and spec.default_target_modules:
        targets = {c: list(v) for c, v in spec.default_target_modules.items()}
    if isinstance(targets, dict):
        return _per_component_targets(linears, components, targets, spec)
    if "all" in targets:
        names = tuple(sorted(linears))
        regex = "^(" + "|".join(re.escape(name) for name in names) + ")$"
        return LoraTargets(names, regex, spec)

    patterns = _expand_targets(targets, linears, ", ".join(components))
    names = tuple(sorted(n for n in linears if _ends_with_any(n, patterns)))
    owners = [module for component in components for module in spec.components[component]]
    # A name that starts with one of the components' modules and ends with a target (and is
    # not a module the forward never runs).
    alternatives = "|".join(re.escape(p) for p in patterns)
    regex = rf"^(?=({'|'.join(owners)})(\.|$))(.*\.)?({alternatives})$"
    if spec.unused_modules:
        regex = f"^(?!({'|'.join(re.escape(u) for u in spec.unused_modules)})$)" + regex[1:]
    return LoraTargets(names, regex, spec)


def _ends_with_any(name: str, patterns: list[str]) -> bool:
    return any(name == p or name.endswith("." + p) for p in patterns)


def _expand_targets(targets: list[str], linears: dict, where: str) -> list[str]:
    """Targets with aliases expanded; each must match a layer of ``linears``."""
    patterns: list[str] = []
    for target in targets:
        expanded = TARGET_ALIASES.get(target, (target,))
        if not any(_ends_with_any(name, list(expanded)) for name in linears):
            available = ", ".join(sorted({n.rsplit(".", 1)[-1] for n in linears}))
            raise ConfigError(
                f"lora.target_modules: `{target}` matches no linear layer in {where}; layers "
                f"there are named: {available} (or use `all`; `a.b` matches names ending in a.b)"
            )
        patterns.extend(p for p in expanded if p not in patterns)
    return patterns


def _per_component_targets(
    linears: dict, components: list[str], targets: dict[str, list[str]], spec: TaskSpec
) -> LoraTargets:
    names: list[str] = []
    for component in components:
        if component not in targets:
            raise ConfigError(
                f"lora.target_modules names no layers for `{component}` (lora.apply_to_"
                f"{component} is on): add `{component}: [...]` (or [all]) or turn the flag off"
            )
        own = {n: m for n, m in linears.items() if spec.component_of(n) == component}
        if "all" in targets[component]:
            names.extend(own)
            continue
        patterns = _expand_targets(targets[component], own, component)
        names.extend(n for n in own if _ends_with_any(n, patterns))
    ordered = tuple(sorted(names))
    return LoraTargets(ordered, "^(" + "|".join(re.escape(n) for n in ordered) + ")$", spec)


def build_peft_config(model: torch.nn.Module, settings: LoraSettings) -> LoraConfig:
    """A PEFT ``LoraConfig`` for ``settings`` on ``model``."""
    targets = resolve_targets(model, settings)
    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets.regex,
        use_dora=settings.use_dora,
        use_rslora=settings.use_rslora,
        modules_to_save=settings.modules_to_save,
        bias=settings.bias,
    )


def apply_lora_to_model(model: torch.nn.Module, settings: LoraSettings | None = None) -> PeftModel:
    """Freeze ``model`` and inject LoRA adapters; only adapter weights (and
    ``modules_to_save``) stay trainable. A 4-bit base (QLoRA) gets PEFT's k-bit preparation
    first (:func:`sam3_lora.quantization.prepare_4bit_training`)."""
    settings = settings or LoraSettings()
    if getattr(model, "is_loaded_in_4bit", False):
        from sam3_lora.quantization import prepare_4bit_training

        model = prepare_4bit_training(model)
    if settings.modules_to_save:
        known = {name for name, _ in model.named_modules()}
        for name in settings.modules_to_save:
            if not any(_saved_entry_matches(k, name) for k in known):
                raise ConfigError(f"lora.modules_to_save: `{name}` is not a module of the model")
        targets = resolve_targets(model, settings).module_names
        if all(_inside_any(name, settings.modules_to_save) for name in targets):
            raise ConfigError(
                "lora.modules_to_save: every LoRA target lies inside a module that is trained "
                f"whole ({', '.join(settings.modules_to_save)}), so no LoRA layer is left; "
                "select another component with lora.apply_to_* or save fewer modules"
            )
    peft_config = build_peft_config(model, settings)
    return get_peft_model(model, peft_config)


def _saved_entry_matches(module_name: str, entry: str) -> bool:
    """PEFT's rule: a ``modules_to_save`` entry names the modules whose name ends with it."""
    return module_name == entry or module_name.endswith("." + entry)


def _inside_any(module_name: str, saved: list[str]) -> bool:
    """Whether ``module_name`` is, or lies inside, a module that ``saved`` entries name."""
    parts = module_name.split(".")
    enclosing = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return any(_saved_entry_matches(m, entry) for m in enclosing for entry in saved)


@dataclass(frozen=True)
class ComponentReport:
    """One row of the parameter table."""

    component: str
    adapted_modules: int
    trainable_parameters: int
    component_parameters: int


@dataclass(frozen=True)
class ParameterReport:
    rows: list[ComponentReport]
    trainable: int
    total: int
    bytes_per_parameter: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    @property
    def adapter_bytes(self) -> int:
        return self.trainable * self.bytes_per_parameter


def parameter_report(model: torch.nn.Module, spec: TaskSpec | None = None) -> ParameterReport:
    """Trainable parameters per component of a LoRA-injected (or fully trained) model."""
    spec = spec or spec_for_model(model)
    adapted: dict[str, set[str]] = {}
    trainable: dict[str, int] = {}
    component_total: dict[str, int] = {}
    total = trainable_total = 0
    dtype_bytes = 4
    for name, parameter in model.named_parameters():
        component = spec.component_of(name)
        count = parameter.numel()
        if "lora_" not in name:
            total += count
            component_total[component] = component_total.get(component, 0) + count
        if parameter.requires_grad:
            trainable_total += count
            dtype_bytes = parameter.element_size()
            trainable[component] = trainable.get(component, 0) + count
            if ".lora_" in name:
                adapted.setdefault(component, set()).add(name.split(".lora_", 1)[0])
    rows = [
        ComponentReport(
            component=component,
            adapted_modules=len(adapted.get(component, ())),
            trainable_parameters=trainable.get(component, 0),
            component_parameters=component_total.get(component, 0),
        )
        for component in sorted(component_total, key=lambda c: _component_order(c, spec))
    ]
    return ParameterReport(rows, trainable_total, total, dtype_bytes)


def parameter_table(report: ParameterReport, title: str = "LoRA parameters") -> Table:
    """The parameter report as a rich table (component, modules, parameters, %, size)."""
    table = Table(title=title, caption=f"base model: {report.total:,} parameters")
    for header in ("component", "adapted modules", "trainable params", "% of total", "on disk"):
        table.add_column(header, justify="left" if header == "component" else "right")
    for row in report.rows:
        table.add_row(
            row.component,
            str(row.adapted_modules),
            f"{row.trainable_parameters:,}",
            f"{100.0 * row.trainable_parameters / max(report.total, 1):.3f}",
            format_bytes(row.trainable_parameters * report.bytes_per_parameter),
        )
    table.add_section()
    table.add_row(
        "total",
        str(sum(row.adapted_modules for row in report.rows)),
        f"{report.trainable:,}",
        f"{report.percent:.3f}",
        format_bytes(report.adapter_bytes),
        style="bold",
    )
    return table


def format_bytes(size: float) -> str:
    """``1536`` -> ``1.5 KB``."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(size) < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def count_parameters(model: torch.nn.Module) -> dict[str, float]:
    """``{"total", "trainable", "percent"}`` as SAM3-LoRA users know it."""
    report = parameter_report(model)
    return {"total": report.total, "trainable": report.trainable, "percent": report.percent}


def _component_order(component: str, spec: TaskSpec) -> tuple[int, str]:
    names = list(spec.components)
    return (names.index(component) if component in names else len(names), component)


def save_lora_weights(
    model: PeftModel, output_dir: str | Path, state_dict: dict[str, torch.Tensor] | None = None
) -> Path:
    """Save the adapter in PEFT format (config + safetensors); ``state_dict``: the model's full
    state dict when its parameters are sharded (FSDP), from which PEFT picks the adapter."""
    if not isinstance(model, PeftModel):
        raise AdapterError("save_lora_weights expects a model returned by apply_lora_to_model")
    output_dir = Path(output_dir)
    model.save_pretrained(
        output_dir, safe_serialization=True, save_embedding_layers=False, state_dict=state_dict
    )
    return output_dir


def load_lora_weights(
    base_model: torch.nn.Module, adapter_dir: str | Path, is_trainable: bool = False
) -> PeftModel:
    """Load a PEFT adapter onto ``base_model``, strictly.

    Checks before and after loading that every adapter tensor has a module of the right shape in
    the base model and that no adapter key is missing or unexpected.

    Raises:
        AdapterError: naming the missing file, mismatching modules or keys.
    """
    adapter_dir = Path(adapter_dir)
    weights_file = adapter_dir / ADAPTER_WEIGHTS
    config_file = adapter_dir / ADAPTER_CONFIG
    for required in (config_file, weights_file):
        if not required.is_file():
            raise AdapterError(
                f"{required} not found: an adapter folder holds {ADAPTER_CONFIG} and "
                f"{ADAPTER_WEIGHTS} (written by `sam3-lora train` in output_dir/final or best)"
            )
    try:
        json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AdapterError(f"{config_file}: not valid JSON ({error})") from None
    file_shapes = _adapter_file_shapes(weights_file)
    _check_adapter_fits(base_model, file_shapes, weights_file)
    try:
        with warnings.catch_warnings():  # missing keys: checked below, with a clearer message
            warnings.filterwarnings("ignore", message="Found missing adapter keys")
            model = PeftModel.from_pretrained(base_model, adapter_dir, is_trainable=is_trainable)
    except (ValueError, RuntimeError, KeyError) as error:
        raise AdapterError(
            f"{adapter_dir}: the adapter does not fit this base model: {error}"
        ) from None
    expected = {
        key: tuple(t.shape)
        for key, t in get_peft_model_state_dict(model, save_embedding_layers=False).items()
    }
    missing = sorted(set(expected) - set(file_shapes))
    unexpected = sorted(set(file_shapes) - set(expected))
    if missing or unexpected:
        raise AdapterError(
            f"{weights_file}: keys do not match the adapter config: "
            f"missing {_preview(missing)}, unexpected {_preview(unexpected)}"
        )
    return model


def _adapter_file_shapes(weights_file: Path) -> dict[str, tuple[int, ...]]:
    try:
        with safe_open(str(weights_file), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    except Exception as error:  # safetensors raises its own error types
        raise AdapterError(f"{weights_file}: not a readable safetensors file ({error})") from None


_LORA_KEY = re.compile(
    r"^base_model\.model\.(?P<module>.+)\.lora_(?P<kind>A|B)(?:\.[^.]+)?\.weight$"
)


def _check_adapter_fits(
    base_model: torch.nn.Module, file_shapes: dict[str, tuple[int, ...]], weights_file: Path
) -> None:
    modules = dict(base_model.named_modules())
    problems: list[str] = []
    for key, shape in file_shapes.items():
        match = _LORA_KEY.match(key)
        if not match:
            continue
        module = modules.get(match["module"])
        if module is None:
            problems.append(f"{match['module']} (no such module in the base model)")
            continue
        in_features = getattr(module, "in_features", None)
        out_features = getattr(module, "out_features", None)
        if match["kind"] == "A" and shape[1] != in_features:
            problems.append(f"{match['module']} (adapter input {shape[1]}, model {in_features})")
        if match["kind"] == "B" and shape[0] != out_features:
            problems.append(f"{match['module']} (adapter output {shape[0]}, model {out_features})")
    if problems:
        raise AdapterError(
            f"{weights_file} was trained for another base model: {len(problems)} module(s) do not "
            f"match, e.g. {_preview(problems)}. Load it onto the base model it was trained on "
            "(see base_model_name_or_path in adapter_config.json)."
        )


def _preview(items: list[str], limit: int = 4) -> str:
    if not items:
        return "none"
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def load_adapter_weights_strict(model: PeftModel, adapter_dir: str | Path) -> None:
    """Load adapter tensors saved by :func:`save_lora_weights` into an existing PEFT model.

    Every adapter tensor of the model must be in the file and every tensor of the file must be
    an adapter tensor of the model, with the same shape; otherwise nothing is silently skipped:
    :class:`AdapterError` names the keys.
    """
    weights_file = Path(adapter_dir) / ADAPTER_WEIGHTS
    if not weights_file.is_file():
        raise AdapterError(f"{weights_file} not found")
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights_file))
    except Exception as error:  # safetensors raises its own error types
        raise AdapterError(f"{weights_file}: not a readable safetensors file ({error})") from None
    expected = {
        k: tuple(v.shape)
        for k, v in get_peft_model_state_dict(model, save_embedding_layers=False).items()
    }
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k]
    )
    if missing or unexpected or wrong_shape:
        raise AdapterError(
            f"{weights_file} does not match the model's adapter: missing {_preview(missing)}, "
            f"unexpected {_preview(unexpected)}, wrong shape {_preview(wrong_shape)}"
        )
    set_peft_model_state_dict(model, state)


def merge_lora_weights(model: PeftModel) -> torch.nn.Module:
    """Fold the adapter into the base weights and return the plain base model."""
    if not isinstance(model, PeftModel):
        raise AdapterError("merge_lora_weights expects a PEFT model with a LoRA adapter")
    return model.merge_and_unload()


def merged_state_dict(model: PeftModel) -> dict[str, torch.Tensor]:
    """The base model's state dict with the active LoRA adapters folded in (``W + B A x
    scale``, what ``merge_and_unload`` computes), on the CPU, leaving ``model`` untouched: a run
    can save its merged best model and go on training the separate adapter."""
    from peft.tuners.lora import LoraLayer

    if not isinstance(model, PeftModel):
        raise AdapterError("merged_state_dict expects a PEFT model with a LoRA adapter")
    from sam3_lora.frozen_weights import original_weights

    base = model.get_base_model()
    float_weights = original_weights(base)  # the float base under bf16 frozen weights
    deltas: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, module in base.named_modules():
            if not isinstance(module, LoraLayer):
                continue
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    delta = module.get_delta_weight(adapter).detach()
                    key = f"{name}.weight"
                    deltas[key] = deltas[key] + delta if key in deltas else delta
        state = {}
        for key, tensor in base.state_dict().items():
            if ".lora_" in key:
                continue
            tensor = float_weights.get(key, tensor)
            key = key.replace(".base_layer.", ".")
            if key in deltas:
                tensor = tensor + deltas[key].to(device=tensor.device, dtype=tensor.dtype)
            state[key] = tensor.detach().cpu().contiguous()
    return state
