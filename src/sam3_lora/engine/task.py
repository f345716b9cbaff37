"""What the engine needs from a task, and from its batches: the only contract between them.

The engine imports no task. A task (SAM3's concept task, SAM2's promptable task, the toy task
of the tests) provides:
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch


class Batch(Protocol):
    """A collated batch."""

    num_images: int
    num_prompts: int
    num_targets: int  # what the loss normalises by (target boxes / objects)

    def to(self, device: torch.device | str) -> Batch: ...


class Task(Protocol):
    """A trainable task.

    Attributes:
        model: the ``nn.Module`` whose ``forward(batch)`` is the whole model call; the trainer
            prepares (and wraps for DDP / FSDP) this module.
    """

    model: torch.nn.Module

    def collate(self, samples: list[Any]) -> Batch:
        """Samples of the datasets -> one batch."""

    def loss(self, outputs: Any, batch: Batch, num_targets: float | None = None) -> dict:
        """``{"loss": total, <term>: value, ...}``; ``num_targets`` is the normaliser."""

    def validation_statistics(self, outputs: Any, batch: Batch) -> dict[str, torch.Tensor]:
        """Per-prompt tensors (first dimension: prompts) of one validation batch."""

    def summarize_validation(self, steps: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """All batches' statistics -> ``val/<name>`` metrics."""

    def save_weights(self, folder: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Write what is trained (adapter or model) into ``folder``; under FSDP the trainer
        passes ``state_dict``, the full state dict of :attr:`model` gathered from every
        process, to write instead of the (sharded) parameters."""

    def load_weights(self, folder: Path) -> None:
        """Load what :meth:`save_weights` wrote, strictly.

        Optional: ``summary_notes() -> dict[str, str]``, extra lines of the end-of-run summary
        (e.g. a cache's hits).
        """
