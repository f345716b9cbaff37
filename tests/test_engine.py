"""The engine knows loops, not models: the real trainer on a toy task, and no task imports."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sam3_lora.config import load_config
from sam3_lora.engine.checkpoint import step_checkpoints
from sam3_lora.engine.trainer import Trainer
from tests.toy_task import ToyDataset, ToyTask, toy_overrides

ENGINE = Path(__file__).resolve().parents[1] / "src" / "sam3_lora" / "engine"
REPO = Path(__file__).resolve().parents[1]


def _run(output: Path, resume: bool | None = None, **extra: object) -> tuple[Trainer, dict]:
    config = load_config(None, toy_overrides(output, **extra))
    trainer = Trainer(config, ToyTask(), ToyDataset(64, seed=1), ToyDataset(16, seed=2))
    return trainer, trainer.train(resume=resume)


def test_toy_task_trains_checkpoints_and_keeps_the_best(tmp_path: Path) -> None:
    _, summary = _run(
        tmp_path, **{"training.max_steps": 40, "training.eval_steps": 10, "training.save_steps": 20}
    )
    assert summary["steps"] == 40 and summary["stop_reason"] == "finished"
    base, final = summary["base_metrics"]["val/mse"], summary["final_metrics"]["val/mse"]
    assert final < 0.1 * base, (base, final)
    assert [step for step, _ in step_checkpoints(tmp_path / "checkpoints")] == [20, 40]
    for folder in ("best", "final", "checkpoints/step-40"):
        assert (tmp_path / folder / "model.safetensors").is_file(), folder
    weights = load_file(str(tmp_path / "final" / "model.safetensors"))["linear.weight"]
    assert torch.allclose(weights[0], torch.tensor([1.5, -2.0, 0.5]), atol=0.25), weights
    saved = json.loads((tmp_path / "training_summary.json").read_text())
    assert saved["best_metric"] == "val/mse" and saved["best_step"] == 40


def test_toy_task_resumes_exactly(tmp_path: Path) -> None:
    settings = {"training.max_steps": 12, "training.save_steps": 6, "training.eval_steps": 6}
    _, straight = _run(tmp_path / "straight", **settings)
    _run(tmp_path / "killed", **settings)
    # As if killed after step 6: the later checkpoint and the final weights never happened.
    import shutil

    shutil.rmtree(tmp_path / "killed" / "checkpoints" / "step-12")
    shutil.rmtree(tmp_path / "killed" / "final")
    _, resumed = _run(tmp_path / "killed", resume=True, **settings)
    assert resumed["steps"] == 12
    expected = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    found = load_file(str(tmp_path / "killed" / "final" / "model.safetensors"))
    for key, value in expected.items():
        torch.testing.assert_close(found[key], value, rtol=0, atol=1e-6)
    assert resumed["final_metrics"]["val/mse"] == pytest.approx(
        straight["final_metrics"]["val/mse"], rel=1e-5
    )


def test_toy_task_stops_early(tmp_path: Path) -> None:
    # A learning rate too small to move the metric by min_delta: patience runs out.
    _, summary = _run(
        tmp_path,
        **{
            "training.max_steps": 100,
            "training.eval_steps": 5,
            "training.learning_rate": 1e-9,
            "training.patience": 2,
            "training.min_delta": 1e-3,
        },
    )
    assert summary["stop_reason"] == "early stopping"
    assert summary["steps"] == 10  # validations at 5 and 10 brought no gain over step 0


def test_toy_training_imports_no_task(tmp_path: Path) -> None:
    script = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from tests.test_engine import _run
from pathlib import Path
_run(Path({str(tmp_path)!r}), **{{"training.max_steps": 3}})
loaded = [m for m in sys.modules if m.startswith(("sam3_lora.tasks", "transformers.models.sam"))]
assert not loaded, loaded
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


def test_no_engine_module_imports_a_task() -> None:
    for file in sorted(ENGINE.glob("*.py")):
        tree = ast.parse(file.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith(("sam3_lora.tasks", "sam3_lora.models")), (file, name)
                assert "sam3" not in name.removeprefix("sam3_lora"), (file, name)


def _run_out_of_memory_at_step_3(monkeypatch: pytest.MonkeyPatch) -> None:
    """The toy task's third loss raises CUDA's out-of-memory error (as a GPU would)."""
    calls = {"n": 0}
    real = ToyTask.loss

    def runs_out_at_step_3(self: ToyTask, outputs: object, batch: object, num: object = None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, outputs, batch, num)

    monkeypatch.setattr(ToyTask, "loss", runs_out_at_step_3)


def test_out_of_memory_stops_with_the_settings_to_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _run_out_of_memory_at_step_3(monkeypatch)
    from sam3_lora.engine.trainer import TrainingError

    with pytest.raises(TrainingError, match="out of GPU memory at step 3.*gradient_checkpointing"):
        _run(tmp_path, **{"training.max_steps": 5, "training.save_steps": 2})
    assert [step for step, _ in step_checkpoints(tmp_path / "checkpoints")] == [2]


def test_out_of_memory_message_carries_the_estimate_it_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _run_out_of_memory_at_step_3(monkeypatch)
    from sam3_lora.engine.trainer import TrainingError

    config = load_config(
        None, toy_overrides(tmp_path, **{"training.max_steps": 5, "training.save_steps": 2})
    )
    seen: list[int | None] = []

    def advice(gpu_memory: int | None) -> str:
        seen.append(gpu_memory)
        return "predicted peak 9.00 GiB; to fit in 8.00 GiB: gradient_checkpointing: true"

    trainer = Trainer(config, ToyTask(), ToyDataset(64, seed=1), None, memory_advice=advice)
    with pytest.raises(TrainingError) as raised:
        trainer.train()
    message = str(raised.value)
    assert message.startswith("out of GPU memory at step 3") and "\n" not in message
    assert "predicted peak 9.00 GiB; to fit in 8.00 GiB: gradient_checkpointing" in message
    assert "--resume" in message and seen == [None]
    assert (tmp_path / "checkpoints" / "step-2" / "model.safetensors").is_file()
