"""Resolve and load weights for inference: a base model, a LoRA adapter on it, a merged model.

``--weights`` / ``--adapter`` may name an adapter folder (``adapter_config.json`` +
``adapter_model.safetensors``), the adapter's safetensors file, or a merged model folder
(``config.json``, no ``adapter_config.json``). An adapter is loaded strictly onto its base model:
the base recorded in ``base_model_name_or_path`` unless the caller names one, and any module or
shape that does not fit is named in an :class:`AdapterError`.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from peft import PeftModel

from sam3_lora.errors import AdapterError
from sam3_lora.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, load_lora_weights
from sam3_lora.models import load_model

logger = logging.getLogger(__name__)


@dataclass
class LoadedPredictor:
    """A model ready for prediction and where its weights came from."""

    model: torch.nn.Module
    processor: Any
    base_source: str
    weights: Path | None = None
    kind: str = "base"  # base | adapter | merged
    notes: list[str] = field(default_factory=list)


class AdapterControls:
    """What the inference classes do with a loaded adapter: ask for it, switch it off for a
    block, fold it into the weights. ``model`` is the loaded model and ``loaded`` its
    :class:`LoadedPredictor`; :meth:`_use_model` points the class's task module at a new model.
    """

    model: torch.nn.Module
    loaded: LoadedPredictor

    @property
    def has_adapter(self) -> bool:
        """Whether a PEFT adapter is loaded on the base (not merged)."""
        return isinstance(self.model, PeftModel)

    @contextmanager
    def adapter_disabled(self) -> Iterator[None]:
        """Run the base model inside the block (the adapter is switched off, not unloaded)."""
        if not self.has_adapter:
            raise AdapterError("no adapter is loaded: there is nothing to disable")
        with self.model.disable_adapter():
            yield

    def merge_adapter(self) -> bool:
        """Fold the adapter into the base weights in memory (exact for LoRA on float weights;
        faster prediction); returns whether it merged. Quantized layers are left unmerged."""
        if not self.has_adapter or not merge_is_exact(self.model):
            return False
        self.model = self.model.merge_and_unload()
        self._use_model(self.model)
        self.loaded.kind = "adapter (merged in memory)"
        return True

    def _use_model(self, model: torch.nn.Module) -> None:
        raise NotImplementedError


def merge_is_exact(model: PeftModel) -> bool:
    """Whether every LoRA layer wraps a plain float ``nn.Linear`` (merging is then exact up to
    rounding; quantized bases would be rounded again)."""
    from peft.tuners.lora import Linear as LoraLinear

    layers = [m for m in model.modules() if hasattr(m, "lora_A")]
    return all(
        isinstance(m, LoraLinear)
        and isinstance(m.get_base_layer(), torch.nn.Linear)
        and m.get_base_layer().weight.dtype.is_floating_point
        for m in layers
    )


def resolve_weights(weights: str | Path) -> tuple[str, Path]:
    """``("adapter", folder)`` or ``("merged", folder)`` for an adapter / model folder or file."""
    path = Path(weights).expanduser()
    if not path.exists():
        raise AdapterError(
            f"weights {path} do not exist: pass an adapter folder (e.g. outputs/my_model/final), "
            f"its {ADAPTER_WEIGHTS}, or a merged model folder"
        )
    if path.is_file():
        folder = path.parent
        if path.name == "config.json" or (
            path.suffix == ".safetensors"
            and (folder / "config.json").is_file()
            and not (folder / ADAPTER_CONFIG).is_file()
        ):
            return "merged", folder
        if path.suffix != ".safetensors":
            raise AdapterError(f"{path} is not a weights file: expected a .safetensors file")
        if not (folder / ADAPTER_CONFIG).is_file():
            raise AdapterError(
                f"{path}: no {ADAPTER_CONFIG} beside it; an adapter needs both files in one folder"
            )
        return "adapter", folder
    if (path / ADAPTER_CONFIG).is_file():
        return "adapter", path
    if (path / "config.json").is_file():
        return "merged", path
    if (path / ADAPTER_WEIGHTS).is_file():
        raise AdapterError(f"{path / ADAPTER_CONFIG} not found: the adapter folder is incomplete")
    raise AdapterError(
        f"{path} holds neither an adapter ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}) nor a merged "
        "model (config.json + model.safetensors)"
    )


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    """``adapter_config.json`` of an adapter folder, checked to be a LoRA adapter."""
    file = adapter_dir / ADAPTER_CONFIG
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AdapterError(f"{file}: not a readable JSON file ({error})") from None
    if not isinstance(data, dict) or data.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{file}: not a LoRA adapter config (peft_type {data.get('peft_type')})")
    return data


def recorded_base_model(adapter_dir: Path) -> str | None:
    """The base model an adapter was trained on: ``base_model_name_or_path`` of its
    ``adapter_config.json``, else ``model.name_or_path`` of the training run's ``config.yaml``
    (``output_dir/config.yaml`` for ``output_dir/final``, ``best`` or ``checkpoints/step-N``)."""
    recorded = read_adapter_config(adapter_dir).get("base_model_name_or_path")
    if recorded:
        return str(recorded)
    for folder in (adapter_dir, adapter_dir.parent, adapter_dir.parent.parent):
        run_config = folder / "config.yaml"
        if run_config.is_file():
            try:
                data = yaml.safe_load(run_config.read_text(encoding="utf-8")) or {}
                return str(data["model"]["name_or_path"])
            except (yaml.YAMLError, UnicodeDecodeError, KeyError, TypeError):
                logger.warning("%s: cannot read model.name_or_path", run_config)
    return None


def detect_family(weights: str | Path | None = None, base_model: str | None = None) -> str:
    """The ``model.family`` of what ``weights`` / ``base_model`` name, for commands given no
    config: a training run's ``config.yaml`` beside the adapter, the model class the adapter
    records (``auto_mapping``), a model folder's ``model_type``, a name only one family knows;
    else ``sam3``."""
    from sam3_lora.models import folder_family
    from sam3_lora.tasks import DEFAULT_FAMILY, FAMILIES, family_for_name, get_spec

    if weights is not None and Path(weights).expanduser().exists():
        kind, folder = resolve_weights(weights)
        if kind == "merged":
            return folder_family(folder) or DEFAULT_FAMILY
        for run_folder in (folder, folder.parent, folder.parent.parent):
            family = _run_config_family(run_folder / "config.yaml")
            if family is not None:
                return family
        mapping = read_adapter_config(folder).get("auto_mapping") or {}
        for family in FAMILIES:
            if mapping.get("base_model_class") == get_spec(family).model_class.__name__:
                return family
        base_model = base_model or recorded_base_model(folder)
    if base_model:
        path = Path(base_model).expanduser()
        found = folder_family(path) if path.is_dir() else family_for_name(base_model)
        if found is not None:
            return found
    return DEFAULT_FAMILY


def _run_config_family(file: Path) -> str | None:
    if not file.is_file():
        return None
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        family = data.get("model", {}).get("family")
    except (yaml.YAMLError, UnicodeDecodeError, AttributeError):
        return None
    return str(family) if family else None


def load_predictor(
    weights: str | Path | None = None,
    base_model: str | None = None,
    device: str | torch.device = "cpu",
    family: str = "sam3",
) -> LoadedPredictor:
    """Load a base model, an adapter on its base model, or a merged model, for inference.

    Args:
        weights: adapter folder / ``adapter_model.safetensors`` / merged model folder, or None
            for the base model alone.
        base_model: the base model (hub id, folder, alias); default: the one the adapter
            was trained on (:func:`recorded_base_model`); the family's default without weights.
        family: ``model.family`` of the base (``sam3``).

    Raises:
        AdapterError: missing files, or an adapter whose modules or shapes do not fit the base
            model (naming the modules, the recorded base and the loaded one).
    """
    if weights is None:
        loaded = load_model(base_model, family, device=device)
        return LoadedPredictor(loaded.model, loaded.processor, loaded.source)
    kind, folder = resolve_weights(weights)
    if kind == "merged":
        if base_model:
            logger.warning("%s is a merged model: base model %s not used", folder, base_model)
        loaded = load_model(str(folder), family, device=device)
        return LoadedPredictor(loaded.model, loaded.processor, loaded.source, folder, "merged")
    recorded = recorded_base_model(folder)
    source = base_model or recorded
    if source is None:
        raise AdapterError(
            f"adapter {folder} does not record its base model (no base_model_name_or_path in "
            f"{ADAPTER_CONFIG}, no training config.yaml beside it): pass it with --model"
        )
    loaded = load_model(source, family, device=device)
    notes = []
    if recorded and recorded != source and Path(recorded).resolve() != Path(source).resolve():
        notes.append(f"adapter {folder} records base model `{recorded}`; loaded `{source}`")
        logger.warning(notes[-1])
    try:
        with warnings.catch_warnings():
            # PEFT looks the base name up on the hub to check for a resized vocabulary; SAM3
            # adapters never touch the embeddings, so its "could not find" warnings are noise.
            warnings.filterwarnings("ignore", "Unable to fetch remote file", UserWarning)
            warnings.filterwarnings("ignore", "Could not find a config file", UserWarning)
            model = load_lora_weights(loaded.model, folder)
    except AdapterError as error:
        hint = f" (the adapter records base model `{recorded}`; loaded `{source}`)"
        raise AdapterError(f"{error}{hint if recorded != source else ''}") from None
    model.to(device)
    model.eval()
    return LoadedPredictor(model, loaded.processor, loaded.source, folder, "adapter", notes)
