from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sam3_lora.engine.checkpoint import atomic_directory_write, step_checkpoints
from sam3_lora.engine.trainer import TrainingError
from sam3_lora.errors import CheckpointError
from sam3_lora.training import SAM3TrainerNative
from tests.conftest import KilledRun, killed_after_checkpoint, tiny_training_overrides

ADAPTER = "adapter_model.safetensors"


def _trainer(shapes_dir: Path, output_dir: Path, **extra: object) -> SAM3TrainerNative:
    return SAM3TrainerNative(None, tiny_training_overrides(shapes_dir, output_dir, **extra))


def test_training_writes_everything_a_user_looks_at(shapes_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "run"
    summary = _trainer(
        shapes_dir,
        output,
        **{
            "training.max_steps": 4,
            "training.eval_steps": 2,
            "training.save_steps": 2,
            "training.save_total_limit": 1,
            "training.eval_at_start": True,
        },
    ).train()
    assert summary["steps"] == 4
    for name in ("final", "best"):
        assert (output / name / ADAPTER).is_file()
        assert (output / name / "adapter_config.json").is_file()
    assert [step for step, _ in step_checkpoints(output / "checkpoints")] == [4]  # limit 1
    assert (output / "curves.png").stat().st_size > 1000
    saved = json.loads((output / "training_summary.json").read_text())
    assert saved["steps"] == 4 and "val/miou" in saved["final_metrics"]
    assert "val/miou" in saved["base_metrics"]
    with open(output / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {"step", "epoch", "lr", "train/loss", "train/class", "train/mask_dice"} <= set(rows[0])
    assert any(row.get("val/miou") for row in rows)
    assert any(row.get("val/absent_fire_rate") for row in rows)
    assert any(row.get("val/negative_fire_rate") for row in rows)
    assert [int(r["step"]) for r in rows if r.get("train/loss")] == [1, 2, 3, 4]


def test_resume_matches_uninterrupted_run(
    shapes_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = {
        "training.max_steps": 10,
        "training.save_steps": 5,
        "training.eval_steps": 5,
        "lora.dropout": 0.1,
        "training.warmup_steps": 2,
    }
    _trainer(shapes_dir, tmp_path / "straight", **settings).train()

    with killed_after_checkpoint(monkeypatch, 5), pytest.raises(KilledRun):
        _trainer(shapes_dir, tmp_path / "resumed", **settings).train()
    summary = _trainer(shapes_dir, tmp_path / "resumed", **settings).train(resume=True)
    assert summary["steps"] == 10

    straight = load_file(tmp_path / "straight" / "final" / ADAPTER)
    resumed = load_file(tmp_path / "resumed" / "final" / ADAPTER)
    assert straight.keys() == resumed.keys()
    assert any(v.abs().sum() > 0 for k, v in straight.items() if "lora_B" in k)
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], atol=1e-6, rtol=0)


def test_resume_refuses_a_checkpoint_with_missing_keys(shapes_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "run"
    _trainer(shapes_dir, output, **{"training.max_steps": 2, "training.save_steps": 2}).train()
    checkpoint = output / "checkpoints" / "step-2"
    weights = load_file(checkpoint / ADAPTER)
    dropped = sorted(weights)[0]
    save_file({k: v for k, v in weights.items() if k != dropped}, checkpoint / ADAPTER)
    with pytest.raises(CheckpointError, match="missing") as error:
        _trainer(shapes_dir, output, **{"training.max_steps": 4}).train(resume=checkpoint)
    assert dropped in str(error.value)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        _trainer(shapes_dir, tmp_path / "empty", **{"training.max_steps": 2}).train(resume=True)


def test_interrupted_save_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    target = tmp_path / "checkpoints" / "step-5"
    atomic_directory_write(target, lambda folder: (folder / "a.txt").write_text("good"))

    def crash(folder: Path) -> None:
        (folder / "a.txt").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_directory_write(target, crash)
    assert (target / "a.txt").read_text() == "good"
    assert [p.name for p in target.parent.iterdir()] == ["step-5"]


def test_non_finite_losses_skip_then_stop(
    shapes_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from sam3_lora.tasks.concept.task import ConceptTask

    real = ConceptTask.loss
    calls = {"n": 0}

    def sometimes_nan(self: ConceptTask, outputs: object, batch: object, num: object = None):
        calls["n"] += 1
        losses = real(self, outputs, batch, num)
        if calls["n"] > 2:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(ConceptTask, "loss", sometimes_nan)
    output = tmp_path / "run"
    with pytest.raises(TrainingError, match="non-finite 3 steps in a row"):
        _trainer(
            shapes_dir,
            output,
            **{
                "training.max_steps": 10,
                "training.save_steps": 2,
                "training.max_nonfinite_steps": 3,
            },
        ).train()
    assert "non-finite loss" in caplog.text
    assert [s for s, _ in step_checkpoints(output / "checkpoints")] == [2]
    assert (output / "checkpoints" / "step-2" / ADAPTER).is_file()


def test_early_stopping(shapes_dir: Path, tmp_path: Path) -> None:
    summary = _trainer(
        shapes_dir,
        tmp_path / "run",
        **{
            "training.max_steps": 20,
            "training.eval_steps": 1,
            "training.patience": 2,
            "training.metric_for_best": "val/prompts",
        },  # constant: never improves
    ).train()
    assert summary["stop_reason"] == "early stopping"
    assert summary["steps"] == 3 and summary["best_step"] == 1


def test_unknown_best_metric_is_explained(shapes_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="metric_for_best `val/miuo`"):
        _trainer(
            shapes_dir,
            tmp_path / "run",
            **{
                "training.max_steps": 1,
                "training.eval_steps": 1,
                "training.metric_for_best": "val/miuo",
            },
        ).train()


def test_gradient_accumulation_counts_optimizer_steps(shapes_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "run"
    summary = _trainer(
        shapes_dir,
        output,
        **{
            "training.num_epochs": 1,
            "training.gradient_accumulation_steps": 2,
            "training.batch_size": 2,
            "training.eval_steps": 100,
        },
    ).train()
    # 8 images / batch 2 = 4 micro-batches = 2 optimizer steps
    assert summary["steps"] == 2
    assert summary["epochs"] == 1


def test_first_losses_are_pinned(shapes_dir: Path, tmp_path: Path) -> None:
    """Catches silent changes in the data pipeline, the model wiring or the loss."""
    output = tmp_path / "run"
    _trainer(shapes_dir, output, **{"training.max_steps": 2, "training.eval_steps": 100}).train()
    with open(output / "metrics.csv") as handle:
        losses = [float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")]
    assert losses == pytest.approx(PINNED_FIRST_LOSSES, rel=1e-3), losses


PINNED_FIRST_LOSSES = [267.2659, 258.8202]  # synthetic generator version 3 (40-110 px shapes)


def test_random_downscaling_at_small_resolution_is_warned_about(
    shapes_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from sam3_lora.config import load_config
    from sam3_lora.tasks.concept.recipe import build_concept_datasets

    overrides = tiny_training_overrides(shapes_dir, tmp_path)
    with caplog.at_level("WARNING", logger="sam3_lora.tasks.concept.recipe"):
        build_concept_datasets(load_config(None, overrides), 224)
    assert "data.augment: false" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="sam3_lora.tasks.concept.recipe"):
        build_concept_datasets(load_config(None, {**overrides, "data.augment": False}), 224)
        build_concept_datasets(load_config(None, overrides), 1008)
    assert "data.augment" not in caplog.text
