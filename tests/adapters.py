"""Tiny LoRA adapters for inference tests: random non-zero LoRA weights, no training."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sam3_lora.config import LoraSettings
from sam3_lora.lora import apply_lora_to_model, save_lora_weights
from sam3_lora.models import load_sam3


def make_tiny_adapter(folder: Path, seed: int = 1, record_base: bool = True) -> Path:
    """Save an adapter for the tiny random SAM3 whose LoRA weights change the predictions."""
    loaded = load_sam3("tiny-random")
    settings = LoraSettings(
        rank=4, alpha=8, dropout=0.0, apply_to_detr_decoder=True, apply_to_mask_decoder=True
    )
    model = apply_lora_to_model(loaded.model, settings)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    save_lora_weights(model, folder)
    config_file = Path(folder) / "adapter_config.json"
    data = json.loads(config_file.read_text())
    assert data["base_model_name_or_path"] == "tiny-random"
    if not record_base:  # an adapter from a tool that does not record its base model
        data["base_model_name_or_path"] = None
        config_file.write_text(json.dumps(data, indent=2))
    return Path(folder)
