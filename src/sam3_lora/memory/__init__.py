"""Will it fit? Peak training memory predicted before anything is downloaded.

``probe`` counts what a training forward saves for backward under fake tensors; ``estimate``
adds weights, gradients and AdamW states and fits the activations per image and per prompt;
``report`` prints the table and the settings that would fit; ``build`` makes a config's model
on the meta device. The task-specific forward lives in ``tasks/<task>/memory.py``.
"""

from __future__ import annotations

from sam3_lora.memory.estimate import MemoryEstimate, MemoryModel, MemorySettings
from sam3_lora.memory.report import oom_advice, parse_gpu_memory

__all__ = ["MemoryEstimate", "MemoryModel", "MemorySettings", "oom_advice", "parse_gpu_memory"]
