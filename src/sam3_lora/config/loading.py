"""Loading a config: preset names and paths, YAML files, ``--set`` / flat CLI overrides, and
validation errors as one readable line (the file, the key, the closest valid key for a typo).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from sam3_lora.config.schema import Config
from sam3_lora.config.sections import LOSS_SECTIONS
from sam3_lora.errors import ConfigError
from sam3_lora.paths import presets_dir

#: Flat CLI flags users of SAM3-LoRA know, and the keys they set.
FLAT_OVERRIDES = {
    "batch_size": "training.batch_size",
    "learning_rate": "training.learning_rate",
    "weight_decay": "training.weight_decay",
    "num_epochs": "training.num_epochs",
    "steps": "training.max_steps",
    "gradient_accumulation_steps": "training.gradient_accumulation_steps",
    "lora_rank": "lora.rank",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "output_dir": "output.output_dir",
    "model": "model.name_or_path",
    "family": "model.family",
}


def resolve_config_path(path_or_preset: str | Path) -> Path:
    """A file path, or a preset name such as ``balanced``.

    Presets are the shipped ``configs/*.yaml`` (package data); ``configs/balanced.yaml`` names
    the preset too when there is no such file in the working directory.
    """
    path = Path(path_or_preset).expanduser()
    if path.is_file():
        return path
    presets = presets_dir()
    for name in (str(path_or_preset), path.stem if path.parent == Path("configs") else ""):
        preset = presets / f"{name}.yaml"
        if name and preset.is_file():
            return preset
    available = ", ".join(sorted(p.stem for p in presets.glob("*.yaml")))
    raise ConfigError(f"config file {path} not found (presets: {available or 'none'})")


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Read a YAML config (or the defaults), apply ``overrides`` and validate.

    Args:
        path: a YAML file or preset name; None for the built-in defaults.
        overrides: dotted keys to values, e.g. ``{"training.max_steps": 6}``.
    """
    source = "<defaults>"
    raw: dict[str, Any] = {}
    if path is not None:
        file = resolve_config_path(path)
        source = str(file)
        try:
            raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{file}: not valid YAML: {error}") from error
        except UnicodeDecodeError as error:
            raise ConfigError(f"{file}: not a UTF-8 text file") from error
        if not isinstance(raw, dict):
            raise ConfigError(f"{file}: expected a mapping of sections, got {type(raw).__name__}")
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value, source="override")
    return validate_config(raw, source)


def validate_config(raw: dict[str, Any], source: str = "<config>") -> Config:
    """Validate a plain dict as a :class:`Config`, with readable errors."""
    try:
        config = Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_describe_errors(error, source)) from None
    config._source = source
    return config


def parse_set_overrides(assignments: list[str]) -> dict[str, Any]:
    """``["training.max_steps=6", "lora.target_modules=[q_proj]"]`` -> a dict (YAML values)."""
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {assignment!r}: expected section.key=value")
        try:
            overrides[key.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as error:
            raise ConfigError(
                f"--set {assignment!r}: the value is not valid YAML ({error})"
            ) from None
    return overrides


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: `{dotted}`: `{part}` is not a section")
        node = child
    node[parts[-1]] = value


def _describe_errors(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        location = [str(part) for part in item["loc"] if not str(part).startswith("function-")]
        loss_type = None
        if location[:1] == ["loss"] and len(location) > 1 and location[1] in LOSS_SECTIONS:
            loss_type = location.pop(1)  # the union's tag, not a key the user wrote
        dotted = ".".join(location)
        if item["type"] == "extra_forbidden":
            hint = _closest_key(location, loss_type)
            message = f"`{dotted}`: unknown key" + (f"; did you mean `{hint}`?" if hint else "")
        elif not dotted:  # a check across sections: its text names the keys
            message = item["msg"].removeprefix("Value error, ")
        else:
            value = item.get("input")
            shown = f" = {value!r}" if not isinstance(value, dict) else ""
            text = item["msg"].removeprefix("Value error, ")
            message = f"`{dotted}`{shown}: {text}"
        if message not in lines:
            lines.append(message)
    return f"{source}: " + "; ".join(lines)


def _closest_key(location: list[str], loss_type: str | None = None) -> str | None:
    model: type[BaseModel] = Config
    for part in location[:-1]:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        nested = _section_type(annotation)
        if model is Config and part == "loss" and loss_type is not None:
            nested = LOSS_SECTIONS[loss_type]
        if nested is None:
            return None
        model = nested
    candidates = list(model.model_fields)
    match = difflib.get_close_matches(location[-1], candidates, n=1, cutoff=0.5)
    if not match:
        return None
    return ".".join([*location[:-1], match[0]])


def _section_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _section_type(arg)
        if found is not None:
            return found
    return None
