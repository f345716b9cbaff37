"""A toy task for the engine: a few-parameter linear model on random tensors, no SAM3.

It follows :mod:`sam3_lora.engine.task` exactly, so the trainer's loop, checkpoints, resume and
early stopping are tested without any model of the package.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

FEATURES = 3
TRUE_WEIGHTS = torch.tensor([1.5, -2.0, 0.5])


@dataclass
class ToyBatch:
    inputs: torch.Tensor  # [B, FEATURES]
    targets: torch.Tensor  # [B]

    @property
    def num_images(self) -> int:
        return len(self.targets)

    num_prompts = num_images
    num_targets = num_images

    def to(self, device: torch.device | str) -> ToyBatch:
        return ToyBatch(self.inputs.to(device), self.targets.to(device))


class ToyDataset(Dataset):
    """``size`` samples of ``y = x . w + noise`` from a fixed seed."""

    def __init__(self, size: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.inputs = torch.randn(size, FEATURES, generator=generator)
        noise = 0.05 * torch.randn(size, generator=generator)
        self.targets = self.inputs @ TRUE_WEIGHTS + noise

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[index], self.targets[index]


class ToyModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(FEATURES, 1)

    def forward(self, batch: ToyBatch) -> torch.Tensor:
        return self.linear(batch.inputs).squeeze(-1)


class ToyTask:
    """Mean squared error regression; ``val/mse`` is its validation metric."""

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = ToyModel()

    def collate(self, samples: list[tuple[torch.Tensor, torch.Tensor]]) -> ToyBatch:
        return ToyBatch(torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples]))

    def loss(self, outputs: torch.Tensor, batch: ToyBatch, num_targets: float | None = None):
        squared = (outputs - batch.targets) ** 2
        total = squared.sum() / (num_targets or len(squared))
        return {"loss": total, "mse": squared.mean().detach()}

    def validation_statistics(self, outputs: torch.Tensor, batch: ToyBatch):
        return {"squared_error": (outputs - batch.targets) ** 2}

    def summarize_validation(self, steps: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        errors = torch.cat([s["squared_error"] for s in steps])
        return {"val/mse": errors.mean().item(), "val/loss": errors.mean().item()}

    def save_weights(self, folder: Path) -> None:
        save_file(dict(self.model.state_dict()), str(Path(folder) / "model.safetensors"))

    def load_weights(self, folder: Path) -> None:
        self.model.load_state_dict(load_file(str(Path(folder) / "model.safetensors")), strict=True)


def toy_overrides(output_dir: Path, **extra: object) -> dict:
    """Config overrides for a short toy run."""
    overrides = {
        "training.batch_size": 4,
        "training.num_workers": 0,
        "training.learning_rate": 0.1,
        "training.weight_decay": 0.0,
        "training.lr_scheduler": "constant",
        "training.logging_steps": 1,
        "training.eval_at_start": True,
        "training.metric_for_best": "val/mse",
        "training.greater_is_better": False,
        "evaluation.batch_size": 8,
        "output.output_dir": str(output_dir),
        "output.tensorboard": False,
    }
    overrides.update(extra)
    return overrides
