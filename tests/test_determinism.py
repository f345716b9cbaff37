"""``training.deterministic``: the switches it flips, and two runs with it on that agree bit for
bit; ``training.seed`` defaults per family."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from sam3_lora.config import load_config, validate_config
from sam3_lora.engine.determinism import CUBLAS_WORKSPACE, seed_everything
from sam3_lora.training import SAM3TrainerNative

REPO = Path(__file__).resolve().parents[1]


def test_seed_defaults_per_family() -> None:
    assert validate_config({}).training.seed == 0  # SAM3 unchanged
    assert validate_config({"model": {"family": "sam2"}}).training.seed == 42
    assert validate_config({"model": {"family": "sam3_tracker"}}).training.seed == 42
    explicit = {"model": {"family": "sam2"}, "training": {"seed": 7}}
    assert validate_config(explicit).training.seed == 7
    assert validate_config({}).training.deterministic is False


def test_seed_everything_switches_and_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    restore = seed_everything(3, deterministic=True)
    try:
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
        first = torch.rand(4)
    finally:
        restore()
    assert not torch.are_deterministic_algorithms_enabled()
    seed_everything(3)()
    assert torch.equal(torch.rand(4), first)


def _losses(tmp_path: Path, name: str) -> list[float]:
    steel = {"output_dir": str(tmp_path / "steel"), "style": "steel", "num_train": 4}
    overrides = {
        "model.name_or_path": "tiny-random",
        "data.train": None,
        "data.valid": None,
        "data.synthetic": {**steel, "num_val": 2, "image_size": 128},
        "training.deterministic": True,
        "training.batch_size": 2,
        "training.max_steps": 3,
        "training.logging_steps": 1,
        "training.num_workers": 0,
        "training.eval_at_start": False,
        "training.eval_steps": 100,
        "training.save_steps": 100,
        "loss.correction_rounds": 1,
        "output.output_dir": str(tmp_path / name),
        "output.tensorboard": False,
    }
    trainer = SAM3TrainerNative(load_config(REPO / "configs" / "sam2_lora.yaml", overrides))
    trainer.train()
    return [row["train/loss"] for row in trainer.trainer.metrics.rows if "train/loss" in row]


def test_two_deterministic_runs_give_identical_losses(tmp_path: Path) -> None:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first, second = _losses(tmp_path, "a"), _losses(tmp_path, "b")
    finally:
        torch.set_num_threads(previous)
    assert len(first) == 3 and all(loss > 0 for loss in first)
    assert first == second  # bit for bit, not approximately
    assert not torch.are_deterministic_algorithms_enabled()  # the trainer restored it
