"""Full fine-tuning through the real trainer: model-folder checkpoints, strict load, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Sam3Model

from sam3_lora.engine.checkpoint import step_checkpoints
from sam3_lora.engine.trainer import Trainer
from sam3_lora.errors import CheckpointError
from sam3_lora.models import load_sam3
from sam3_lora.training import SAM3TrainerNative
from tests.conftest import KilledRun, killed_after_checkpoint, tiny_training_overrides

WEIGHTS = "model.safetensors"
FULL = {"finetune.mode": "full", "training.eval_steps": 100}


def _trainer(shapes_dir: Path, output_dir: Path, **extra: object) -> SAM3TrainerNative:
    overrides = tiny_training_overrides(shapes_dir, output_dir, **{**FULL, **extra})
    del overrides["training.learning_rate"]  # not used in full mode
    return SAM3TrainerNative(None, overrides)


def test_full_run_writes_model_folders_that_from_pretrained_loads(
    shapes_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "run"
    settings = {"training.max_steps": 2, "training.save_steps": 2}
    summary = _trainer(
        shapes_dir, output, **settings, **{"training.gradient_checkpointing": True}
    ).train()
    assert summary["steps"] == 2
    final = output / "final"
    assert not (final / "adapter_config.json").exists()
    assert {"config.json", WEIGHTS, "processor_config.json"} <= {p.name for p in final.iterdir()}
    model = Sam3Model.from_pretrained(final)
    base = load_sam3("tiny-random").model  # the same seed-built start
    trained = load_file(final / WEIGHTS)
    assert trained.keys() == set(model.state_dict()) - set(model._tied_weights_keys or ())
    moved = [k for k, v in base.state_dict().items() if k in trained and not v.equal(trained[k])]
    assert any(k.startswith("vision_encoder") for k in moved)  # every component is trained
    assert any(k.startswith("text_encoder") for k in moved)
    assert any(k.startswith("mask_decoder") for k in moved)
    checkpoint = output / "checkpoints" / "step-2"
    assert (checkpoint / WEIGHTS).is_file() and not list(checkpoint.glob(".*tmp*"))


def test_full_resume_matches_uninterrupted_run(
    shapes_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = {
        "training.max_steps": 6,
        "training.save_steps": 3,
        "training.warmup_steps": 2,
        "training.lr_scheduler": "inverse_sqrt",
        "training.cooldown_steps": 2,
        "finetune.lr_scale": 1.0,
    }
    _trainer(shapes_dir, tmp_path / "straight", **settings).train()

    with killed_after_checkpoint(monkeypatch, 3), pytest.raises(KilledRun):
        _trainer(shapes_dir, tmp_path / "resumed", **settings).train()
    assert _trainer(shapes_dir, tmp_path / "resumed", **settings).train(resume=True)["steps"] == 6

    straight = load_file(tmp_path / "straight" / "final" / WEIGHTS)
    resumed = load_file(tmp_path / "resumed" / "final" / WEIGHTS)
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key


def test_full_resume_refuses_a_checkpoint_with_missing_keys(
    shapes_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "run"
    _trainer(shapes_dir, output, **{"training.max_steps": 1, "training.save_steps": 1}).train()
    [(_, checkpoint)] = step_checkpoints(output / "checkpoints")
    weights = load_file(checkpoint / WEIGHTS)
    dropped = "detr_decoder.layers.0.mlp.fc1.weight"
    save_file({k: v for k, v in weights.items() if k != dropped}, checkpoint / WEIGHTS)
    with pytest.raises(CheckpointError, match="missing") as error:
        _trainer(shapes_dir, output, **{"training.max_steps": 2}).train(resume=checkpoint)
    assert dropped in str(error.value)


def test_trainer_optimizer_uses_the_task_groups(
    shapes_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, list[dict]] = {}
    original = Trainer.setup

    def setup_and_record(self: Trainer) -> None:
        original(self)
        seen["groups"] = [dict(g) for g in self.optimizer.param_groups]
        seen["task"] = self.task.parameter_groups()

    monkeypatch.setattr(Trainer, "setup", setup_and_record)
    _trainer(shapes_dir, tmp_path / "run", **{"training.max_steps": 1}).train()
    expected = {g["name"]: (g["lr"], g["weight_decay"], len(g["params"])) for g in seen["task"]}
    built = {g.get("name"): (g["lr"], g["weight_decay"], len(g["params"])) for g in seen["groups"]}
    assert built == expected
    assert built["vision_encoder.layer4"][0] == pytest.approx(2.5e-5 * 0.9)
    assert built["vision_encoder.layer0"][0] == pytest.approx(2.5e-5 * 0.9**5)
    assert built["text_encoder"][0] == pytest.approx(5e-6)
    assert built["detr_decoder"][0] == pytest.approx(8e-5)
