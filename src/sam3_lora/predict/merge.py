"""Merge a LoRA adapter into its base model and save a plain Hugging Face model folder.

The folder (``model.safetensors``, ``config.json``, processor files) loads with the family's
plain ``from_pretrained`` (``Sam3Model`` / ``Sam3Processor``; ``Sam2Model`` / ``Sam2Processor``;
``Sam3TrackerModel``) and needs neither ``peft`` nor this package; ``SAM3LoRAInference`` /
``SAM2LoRAInference(weights_path=folder)`` load it too.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from sam3_lora.errors import AdapterError
from sam3_lora.lora import format_bytes, merge_lora_weights
from sam3_lora.models import save_model_folder
from sam3_lora.predict.weights import detect_family, load_predictor

logger = logging.getLogger(__name__)

MERGE_INFO = "sam3_lora_merge.json"


def merge_adapter(
    adapter_dir: str | Path,
    output_dir: str | Path,
    base_model: str | None = None,
    family: str | None = None,
) -> dict[str, Any]:
    """Load ``adapter_dir`` onto its base model (strictly), merge, save to ``output_dir``.

    Args:
        family: the base model's family; default: found from the adapter (``detect_family``).

    Returns a summary: ``output``, ``family``, ``base_model``, ``adapter``, ``parameters``,
    ``size``.

    Raises:
        AdapterError: the weights are not an adapter, do not fit the base, or the output folder
            is the adapter folder.
    """
    output_dir = Path(output_dir)
    family = family or detect_family(adapter_dir, base_model)
    loaded = load_predictor(adapter_dir, base_model, family=family)
    if loaded.kind != "adapter":
        raise AdapterError(f"{adapter_dir} is already a merged model: there is nothing to merge")
    if output_dir.resolve() == Path(loaded.weights).resolve():
        raise AdapterError(f"--output {output_dir} is the adapter folder; choose another folder")
    model = merge_lora_weights(loaded.model)
    model.config.name_or_path = str(output_dir)
    save_model_folder(model, loaded.processor, output_dir)
    info = {
        "family": family,
        "base_model": loaded.base_source,
        "adapter": str(loaded.weights),
        "notes": loaded.notes,
    }
    (output_dir / MERGE_INFO).write_text(json.dumps(info, indent=2), encoding="utf-8")
    size = sum(p.stat().st_size for p in output_dir.glob("*.safetensors"))
    logger.info("merged %s into %s -> %s", loaded.weights, loaded.base_source, output_dir)
    return {
        "output": str(output_dir),
        "family": family,
        "base_model": loaded.base_source,
        "adapter": str(loaded.weights),
        "parameters": f"{sum(p.numel() for p in model.parameters()):,}",
        "size": format_bytes(size),
    }
