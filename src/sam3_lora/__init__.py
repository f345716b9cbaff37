"""sam3-lora: fine-tune SAM3 with LoRA adapters.

The public API is imported lazily, so ``import sam3_lora`` stays fast::

    from sam3_lora import SAM3LoRAInference, SAM3TrainerNative, load_config
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

__version__ = "0.1.0"

# bitsandbytes (imported by peft when installed) warns on every import, on CPUs with AVX512-BF16,
# that an optional hub kernel is missing; QLoRA on CPU uses its generic kernel instead.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

_EXPORTS = {
    "SAM3LoRAInference": "sam3_lora.predict.inference",
    "SAM2LoRAInference": "sam3_lora.predict.promptable",
    "SAM3TrainerNative": "sam3_lora.training",
    "LoRAConfig": "sam3_lora.lora",
    "apply_lora_to_model": "sam3_lora.lora",
    "count_parameters": "sam3_lora.lora",
    "save_lora_weights": "sam3_lora.lora",
    "load_lora_weights": "sam3_lora.lora",
    "merge_lora_weights": "sam3_lora.lora",
    "load_config": "sam3_lora.config",
    "Sam3ConceptLoss": "sam3_lora.tasks.concept.loss",
    "merge_adapter": "sam3_lora.predict.merge",
    "evaluate_from_config": "sam3_lora.evaluation.runner",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sam3_lora' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
