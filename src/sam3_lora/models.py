"""Load base models and processors of any task: hub ids, local folders, a task's aliases.

Everything here speaks the Hugging Face formats: a folder written by :func:`save_model_folder`
loads with the task's plain ``from_pretrained`` (``Sam3Model`` / ``Sam3Processor`` for SAM3).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from sam3_lora.errors import CheckpointError, ModelLoadError
from sam3_lora.tasks import FAMILIES, TaskSpec, get_spec

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A base model with its processor, where it came from and its task's spec."""

    model: Any
    processor: Any | None
    source: str
    spec: TaskSpec


def load_model(
    name_or_path: str | None = None,
    family: str = "sam3",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    quantization: str = "none",
) -> LoadedModel:
    """Load a family's model + processor from a hub id, a local folder or one of its aliases
    (SAM3: ``tiny``, ``tiny-random``, ``sam3-size``; SAM2: ``tiny``, ``tiny-random``,
    ``sam2.1-large-size`` ...; see ``TaskSpec.aliases``).

    Args:
        quantization: ``4bit``: the base in 4 bits for QLoRA (``model.quantization``; see
            :mod:`sam3_lora.quantization`), on this process's GPU when there is one (``device``
            is then not used); ``none``: in ``dtype`` on ``device``.

    Raises:
        ModelLoadError: with the fix, when weights are missing or not reachable, or a model
            built without weights is asked for in 4 bits.
        ConfigError: 4 bits without bitsandbytes installed.
    """
    spec = get_spec(family)
    name_or_path = name_or_path or spec.default_model
    if quantization == "4bit":
        return load_4bit_model(name_or_path, spec)
    source, model, processor = _locate(name_or_path, spec)
    if model is None:
        model = _from_pretrained(spec.model_class, source, spec, dtype=dtype)
        processor = _from_pretrained(spec.processor_class, source, spec)
    if model.device.type != "meta":
        model.to(device=device, dtype=dtype)
    model.eval()
    # Adapters record this as their base model: keep the name the user gave (`tiny`, a hub id).
    model.name_or_path = model.config.name_or_path = name_or_path
    return LoadedModel(model=model, processor=processor, source=str(source), spec=spec)


def load_4bit_model(name_or_path: str, spec: TaskSpec) -> LoadedModel:
    """The base in 4 bits (``BitsAndBytesConfig`` at ``from_pretrained``). A model an alias
    builds in memory (``tiny-random``) is saved to a temporary folder and loaded from there; one
    built on the meta device (``*-size``) has no weights to quantise: an error."""
    from sam3_lora.quantization import (
        bnb_4bit_config,
        quantized_device,
        require_bitsandbytes,
        use_generic_cpu_kernel,
    )

    require_bitsandbytes()
    device = quantized_device()
    config = bnb_4bit_config(spec, device)
    with tempfile.TemporaryDirectory(prefix="sam3-lora-4bit-") as scratch:
        source, built, processor = _locate(name_or_path, spec)
        if built is not None and built.device.type == "meta":
            raise ModelLoadError(
                f"model.quantization 4bit: `{name_or_path}` is built on the meta device, "
                "without weights to quantise; use a hub id or a model folder (or "
                "model.quantization: none)"
            )
        if built is not None:
            built.save_pretrained(scratch, safe_serialization=True)
            source = scratch
        model = _from_pretrained(
            spec.model_class,
            source,
            spec,
            quantization_config=config,
            device_map={"": device},
            dtype=torch.float32,
        )
        if processor is None:
            processor = _from_pretrained(spec.processor_class, source, spec)
        shown = name_or_path if source == scratch else str(source)
    if device.type == "cpu":
        use_generic_cpu_kernel(model)
    model.eval()
    model.name_or_path = model.config.name_or_path = name_or_path
    logger.info("%s loaded in 4 bits on %s", name_or_path, device)
    return LoadedModel(model=model, processor=processor, source=shown, spec=spec)


def _locate(name_or_path: str, spec: TaskSpec) -> tuple[str, Any, Any]:
    """Where ``name_or_path``'s weights come from, its family checked: ``(source, model,
    processor)``; ``model`` is set when an alias builds one in memory (``source`` is then the
    alias), else None and ``source`` is a folder or hub id; ``processor``: an alias's."""
    processor = None
    if name_or_path in spec.aliases:
        built, processor = spec.build_alias(name_or_path)
        if not isinstance(built, Path):
            return name_or_path, built, processor
        if not (built / "config.json").is_file():
            raise ModelLoadError(
                f"`{name_or_path}` is not installed in {built}; rebuild it with the script in "
                "scripts/ or use another --model"
            )
        source = str(built)
    else:
        _check_alias_family(name_or_path, spec)
        source = _resolve_source(name_or_path)
    if Path(source).is_dir():
        _check_folder_family(Path(source), spec)
    return source, None, processor


def load_sam3(
    name_or_path: str = "facebook/sam3",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LoadedModel:
    """:func:`load_model` for SAM3 (``Sam3Model`` + ``Sam3Processor``)."""
    return load_model(name_or_path, "sam3", device, dtype)


def folder_family(folder: str | Path) -> str | None:
    """The family of a model folder, from ``model_type`` in its ``config.json`` (``sam2`` ->
    ``sam2``); None when it is not a folder of a known family."""
    file = Path(folder) / "config.json"
    try:
        model_type = json.loads(file.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    for family in FAMILIES:
        if get_spec(family).model_class.config_class.model_type == model_type:
            return family
    return None


def _check_alias_family(name: str, spec: TaskSpec) -> None:
    if Path(name).expanduser().exists():
        return
    from sam3_lora.tasks import family_for_name

    owner = family_for_name(name)
    if owner is not None and owner != spec.family and name in get_spec(owner).aliases:
        raise ModelLoadError(
            f"`{name}` is a {owner} model, not a {spec.family} one: set model.family: {owner} "
            f"(or --family {owner}); {spec.family} names: {', '.join(spec.aliases)}"
        )


def _check_folder_family(folder: Path, spec: TaskSpec) -> None:
    found = folder_family(folder)
    if found is not None and found != spec.family:
        raise ModelLoadError(
            f"{folder} holds a `{found}` model, not a `{spec.family}` one: set model.family: "
            f"{found} (or --family {found})"
        )


def _resolve_source(name_or_path: str) -> str:
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} is not a model folder: it has no config.json. Pass a folder saved with "
                "`save_pretrained` (config.json, model.safetensors, processor files) or a hub id."
            )
        return str(path)
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ModelLoadError(f"model folder {name_or_path} does not exist")
    return name_or_path


def _from_pretrained(cls: type, source: str, spec: TaskSpec, **kwargs: object) -> Any:
    """``cls.from_pretrained``: the local cache first, then the hub only when it is reachable."""
    is_local = Path(source).exists()
    try:
        return cls.from_pretrained(source, local_files_only=not is_local or None, **kwargs)
    except OSError as error:
        if is_local or os.environ.get("HF_HUB_OFFLINE") or not _hub_reachable():
            raise ModelLoadError(_explain_load_failure(source, error, spec)) from error
    try:
        return cls.from_pretrained(source, **kwargs)
    except OSError as error:
        raise ModelLoadError(_explain_load_failure(source, error, spec)) from error


def _hub_reachable(timeout: float = 3.0) -> bool:
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host or "huggingface.co", 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _explain_load_failure(source: str, error: Exception, spec: TaskSpec) -> str:
    if Path(source).exists():
        return f"cannot load {source}: {error}"
    return (
        f"cannot load `{source}`: not in the local Hugging Face cache and the hub is not reachable "
        f"or refused the download. {spec.gated_hint}"
    )


def save_model_folder(model: Any, processor: Any | None, output_dir: Path) -> Path:
    """Save a plain model folder (safetensors + config + processor files)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    if processor is not None:
        processor.save_pretrained(output_dir)
    return output_dir


def load_model_weights_strict(model: torch.nn.Module, weights_file: Path) -> None:
    """Load a full ``model.safetensors`` into ``model``; any key difference is an error."""
    from safetensors.torch import load_file

    if not Path(weights_file).is_file():
        raise CheckpointError(f"{weights_file} not found")
    state = load_file(str(weights_file))
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise CheckpointError(f"{weights_file} does not match the model: {error}") from None
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{weights_file} does not match the model: missing {missing[:4]}, "
            f"unexpected {result.unexpected_keys[:4]}"
        )
