"""QLoRA's base model: a 4-bit (NF4) base loaded through ``bitsandbytes``, LoRA trained on top.

``model.quantization: 4bit`` loads the base with ``transformers``' ``BitsAndBytesConfig``: NF4
weights with double quantisation (the block scales quantised too), matmuls in bf16 on a GPU and
fp32 on CPU. Only ``nn.Linear`` layers are quantised, and of those not the task's
``TaskSpec.float_modules`` (heads and small layers: a few per cent of the weights, where rounding
costs more than it saves). The adapter trained on top is a plain PEFT adapter: it loads onto the
float base (``predict`` and ``merge`` always load the base in float).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import torch

from sam3_lora.errors import ConfigError
from sam3_lora.tasks.spec import TaskSpec

QUANTIZATION_MODES = ("none", "4bit")
INSTALL_HINT = 'pip install "sam3-lora[qlora]"'


def require_bitsandbytes() -> None:
    """Raise :class:`ConfigError` (with the install command) when ``bitsandbytes`` is missing."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            f"model.quantization 4bit needs bitsandbytes, which is not installed: {INSTALL_HINT}"
        )


def quantized_device() -> torch.device:
    """Where a 4-bit base is loaded: this process's GPU (``LOCAL_RANK`` under a launcher) when
    there is one, else the CPU (bitsandbytes' CPU kernels)."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0))
    return torch.device("cpu")


def compute_dtype(device: torch.device) -> torch.dtype:
    """The dtype of the 4-bit layers' matmuls: bf16 on a GPU that has it, fp32 otherwise."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def bnb_4bit_config(spec: TaskSpec, device: torch.device) -> Any:
    """The ``BitsAndBytesConfig`` of ``spec``'s family: NF4, double quantisation, the
    ``spec.float_modules`` left in float."""
    require_bitsandbytes()
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(device),
        llm_int8_skip_modules=[name.replace(".", r"\.") for name in spec.float_modules],
    )


def is_4bit(model: torch.nn.Module) -> bool:
    """Whether any layer of ``model`` holds 4-bit ``bitsandbytes`` weights."""
    return any(type(p).__name__ == "Params4bit" for p in model.parameters())


def prepare_4bit_training(model: torch.nn.Module) -> torch.nn.Module:
    """PEFT's k-bit preparation of a 4-bit base: every base weight frozen, float weights kept in
    fp32. Activation checkpointing stays ``training.gradient_checkpointing``'s (not PEFT's)."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def use_generic_cpu_kernel(model: torch.nn.Module) -> int:
    """Turn off bitsandbytes' AVX512-BF16 CPU inference layout on every 4-bit layer; returns how
    many. That path (0.50, eval mode without gradients) repacks the weights in place and needs
    ``in_features`` divisible by 64 (the tiny models' 96-d ViT is not: it fails); the generic
    CPU kernel runs every shape in training and evaluation alike."""
    layers = [m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def weight_bytes(model: torch.nn.Module) -> dict[str, int]:
    """Bytes of the model's weights: ``4bit`` (packed weights and their quantisation
    statistics), ``float`` (everything else) and ``total``."""
    packed = statistics = other = 0
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            size = parameter.numel() * parameter.element_size()
            if type(parameter).__name__ == "Params4bit":
                packed += size
                state = getattr(parameter, "quant_state", None)
                statistics += _quant_state_bytes(state) if state is not None else 0
            else:
                other += size
    return {"4bit": packed + statistics, "float": other, "total": packed + statistics + other}


def _quant_state_bytes(state: Any) -> int:
    """Bytes of a ``bitsandbytes`` ``QuantState`` (absmax, code, nested state)."""
    size = 0
    for name in ("absmax", "code", "offset"):
        tensor = getattr(state, name, None)
        if isinstance(tensor, torch.Tensor):
            size += tensor.numel() * tensor.element_size()
    nested = getattr(state, "state2", None)
    return size + (_quant_state_bytes(nested) if nested is not None else 0)
