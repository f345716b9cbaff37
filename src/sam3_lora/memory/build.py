"""A config's model architecture on the meta device, without weights or downloads."""

from __future__ import annotations

from pathlib import Path

import torch

from sam3_lora.config import Config
from sam3_lora.errors import ModelLoadError
from sam3_lora.memory.estimate import MemoryModel
from sam3_lora.tasks import TaskSpec, get_spec


def architecture(name: str, spec: TaskSpec) -> tuple[torch.nn.Module, str]:
    """The model ``name`` names, built without its weights: a known hub id -> its released
    architecture, an alias -> its builder, a folder (or a hub id in the local cache) -> its
    ``config.json``. Returns the model and a description of where its shapes came from."""
    given = name
    alias = spec.hub_architectures.get(name, name)
    if alias in spec.aliases:
        built, _ = spec.build_alias(alias)
        if not isinstance(built, Path):
            return built, name if alias == name else f"{name} ({alias})"
        name = str(built)
    config_class = spec.model_class.config_class
    try:
        if Path(name).expanduser().is_dir():
            config = config_class.from_pretrained(str(Path(name).expanduser()))
        else:
            config = config_class.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as error:
        known = ", ".join([*spec.hub_architectures, *spec.aliases])
        raise ModelLoadError(
            f"cannot estimate `{name}` without its config.json ({str(error).splitlines()[0]}); "
            f"use a model folder or one of: {known}"
        ) from None
    with torch.device("meta"):
        return spec.model_class(config), given


#: Memory models of this process by (config, resolution): probes are kept with their counts.
_BUILT: dict[tuple[str, int | None, str], tuple[MemoryModel, str]] = {}
_KEEP = 4


def memory_model(
    config: Config, resolution: int | None = None, target: str = "cuda"
) -> tuple[MemoryModel, str]:
    """The :class:`MemoryModel` of ``config`` (its family's probe on the meta-device model)
    for ``target`` (``cuda``: a GPU's memory; ``cpu``: a run on this CPU); the last few are
    kept, with their probe counts."""
    key = (config.model_dump_json(), resolution, target)
    if key not in _BUILT:
        if len(_BUILT) >= _KEEP:
            _BUILT.pop(next(iter(_BUILT)))
        _BUILT[key] = _build(config, resolution, target)
    return _BUILT[key]


def _build(config: Config, resolution: int | None, target: str) -> tuple[MemoryModel, str]:
    spec = get_spec(config.model.family)
    if spec.memory_probe is None:
        raise ModelLoadError(f"model.family {spec.family}: no memory estimate for this task")
    model, source = architecture(config.model.name_or_path, spec)
    return MemoryModel(spec.memory_probe(config, model, resolution), target), source
