"""What every task saves and loads as "its weights": the adapter of a LoRA model (PEFT format),
or the whole model with its processor in full fine-tuning (a ``from_pretrained`` folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from torch import Tensor

from sam3_lora.errors import AdapterError, CheckpointError
from sam3_lora.lora import load_adapter_weights_strict, save_lora_weights
from sam3_lora.models import load_model_weights_strict


def save_trained_weights(
    network: torch.nn.Module,
    processor: Any | None,
    folder: Path,
    state_dict: dict[str, Tensor] | None = None,
) -> None:
    """Write what is trained of ``network`` into ``folder``: the adapter for a PEFT model, else
    the model (``save_pretrained``, safetensors) and ``processor``.

    Args:
        state_dict: under FSDP: the gathered state dict of the task module (keys under
            ``network.``), written instead of the sharded parameters.
    """
    if state_dict is not None:
        state_dict = {k.removeprefix("network."): v for k, v in state_dict.items()}
    if isinstance(network, PeftModel):
        save_lora_weights(network, folder, state_dict)
        return
    network.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
    if processor is not None:
        processor.save_pretrained(folder)


def load_trained_weights(network: torch.nn.Module, folder: Path) -> None:
    """Load what :func:`save_trained_weights` wrote, strictly (missing / unexpected keys fail
    with a :class:`CheckpointError`)."""
    try:
        if isinstance(network, PeftModel):
            load_adapter_weights_strict(network, folder)
        else:
            load_model_weights_strict(network, Path(folder) / "model.safetensors")
    except AdapterError as error:
        raise CheckpointError(str(error)) from None
