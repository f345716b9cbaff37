"""Shared fixtures: tiny SAM3 models of the released classes (never mocks)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sam3_lora.models import LoadedModel, load_sam3

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def tiny_sam3() -> LoadedModel:
    """A fresh randomly initialised tiny SAM3 with its processor."""
    return load_sam3("tiny-random")


@pytest.fixture
def tiny_inputs(tiny_sam3: LoadedModel) -> dict[str, torch.Tensor]:
    """Processor outputs for one random image and two text prompts."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    inputs = tiny_sam3.processor(
        images=[image, image], text=["circle", "star"], return_tensors="pt"
    )
    return {k: v for k, v in inputs.items() if k in ("pixel_values", "input_ids", "attention_mask")}


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic shapes dataset (train 8, valid 4 images) in the Roboflow layout."""
    from sam3_lora.data.synthetic import generate_shapes_dataset

    root = tmp_path_factory.mktemp("shapes")
    return generate_shapes_dataset(
        root / "shapes", num_train=8, num_val=4, seed=0, image_size=128, progress=False
    )


def tiny_training_overrides(shapes_dir: Path, output_dir: Path, **extra: object) -> dict:
    """Config overrides for a few fast CPU training steps on the tiny random SAM3."""
    overrides = {
        "model.name_or_path": "tiny-random",
        "data.train": str(shapes_dir / "train"),
        "data.valid": str(shapes_dir / "valid"),
        "data.num_negative_prompts": 1,
        "lora.rank": 4,
        "lora.alpha": 8,
        "training.batch_size": 2,
        "training.num_workers": 0,
        "training.learning_rate": 1e-3,
        "training.logging_steps": 1,
        "training.eval_at_start": False,
        "output.output_dir": str(output_dir),
        "output.tensorboard": False,
    }
    overrides.update(extra)
    return overrides


class KilledRun(Exception):
    """Raised where a killed training run would have stopped."""


@contextmanager
def killed_after_checkpoint(monkeypatch: pytest.MonkeyPatch, step: int) -> Iterator[None]:
    """Inside: a training run dies (:class:`KilledRun`) right after writing its checkpoint
    of ``step``, as a run killed between two steps would."""
    from sam3_lora.engine.trainer import Trainer

    original = Trainer.save_checkpoint

    def save_then_die(self: Trainer) -> Path:
        folder = original(self)
        if self.state.global_step == step:
            raise KilledRun
        return folder

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_die)
    try:
        yield
    finally:
        monkeypatch.setattr(Trainer, "save_checkpoint", original)
