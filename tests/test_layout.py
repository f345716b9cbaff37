"""The ``sam2_lora`` output layout through the real trainer on the toy task: run folder, names,
one best pair, checkpoint rotation, ``--resume`` discovery; and the layout's small helpers."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sam3_lora.config import load_config
from sam3_lora.engine.layout import (
    LayoutPlan,
    format_learning_rate,
    latest_final,
    new_run_dir,
    resolve_run,
    run_dirs,
)
from sam3_lora.engine.trainer import Trainer
from sam3_lora.errors import CheckpointError
from tests.toy_task import ToyDataset, ToyTask, toy_overrides

PLAN = LayoutPlan("sam2_lora", "toy_lora_r1_a1_lr1e-1", (("mse", "val/mse"),))
SETTINGS = {
    "training.max_steps": 12,
    "training.save_steps": 3,
    "training.eval_steps": 3,
    "training.save_total_limit": 2,
}


class MergingToyTask(ToyTask):
    """The toy task with a "merged" model to save, as LoRA tasks have."""

    def save_merged_weights(self, folder: Path) -> None:
        weights = {k: v * 1.0 for k, v in self.model.state_dict().items()}
        save_file(weights, str(Path(folder) / "model.safetensors"))


def _run(output: Path, resume: bool | Path | None = None) -> tuple[Trainer, dict]:
    config = load_config(None, toy_overrides(output, **SETTINGS))
    data = ToyDataset(64, seed=1), ToyDataset(16, seed=2)
    trainer = Trainer(config, MergingToyTask(), *data, layout=PLAN, config_text="toy: 1\n")
    return trainer, trainer.train(resume=resume)


def test_named_layout_folders(tmp_path: Path) -> None:
    trainer, summary = _run(tmp_path)
    (run,) = run_dirs(tmp_path, PLAN.run_name)
    assert trainer.run_dir == run and summary["output_dir"] == str(run)
    stamp = run.name.removeprefix(f"{PLAN.run_name}_")
    datetime.strptime(stamp, "%Y%m%d_%H%M%S")
    names = sorted(p.name for p in run.iterdir())
    assert [n for n in names if n.startswith("latest_")] == [
        "latest_lora_step12",  # save_total_limit 2 of 3, 6, 9, 12
        "latest_lora_step9",
    ]
    best = [n for n in names if n.startswith("best_")]
    value = f"{summary['best_value']:.4f}"
    step = summary["best_step"]
    assert best == [f"best_lora_step{step}_mse{value}", f"best_merged_step{step}_mse{value}"]
    assert summary["best_dir"] == str(run / best[0])
    assert (
        "final_lora_step12" in names and (run / "final_lora_step12" / "model.safetensors").is_file()
    )
    assert (run / "config.yaml").read_text() == "toy: 1\n"
    assert json.loads((run / "training_summary.json").read_text())["steps"] == 12
    csv = run / "logs" / f"training_metrics_lora_{stamp}.csv"
    assert "train/loss" in csv.read_text().splitlines()[0]
    assert not any(n.startswith(".") for n in names)  # no temporary folder left
    assert latest_final(PLAN, tmp_path) == run / "final_lora_step12"
    assert len(list(tmp_path.iterdir())) == 1  # the run folder only


def test_resume_finds_the_latest_checkpoint_in_the_run_folder(tmp_path: Path) -> None:
    _, straight = _run(tmp_path / "straight")
    _run(tmp_path / "killed")
    (run,) = run_dirs(tmp_path / "killed", PLAN.run_name)
    # As if killed after the step-9 checkpoint: step 12 and the final adapter never happened.
    shutil.rmtree(run / "latest_lora_step12")
    shutil.rmtree(run / "final_lora_step12")
    (run / ".best_lora_step3_mse1.0000.tmp-99").mkdir()  # a best write killed half-way
    trainer, resumed = _run(tmp_path / "killed", resume=True)
    assert trainer.resume_from == run / "latest_lora_step9"
    assert run_dirs(tmp_path / "killed", PLAN.run_name) == [run]  # the same run folder goes on
    assert resumed["steps"] == 12 and resumed["best_step"] == straight["best_step"]
    (first,) = run_dirs(tmp_path / "straight", PLAN.run_name)
    expected = load_file(str(first / "final_lora_step12" / "model.safetensors"))
    found = load_file(str(run / "final_lora_step12" / "model.safetensors"))
    for key, value in expected.items():
        torch.testing.assert_close(found[key], value, rtol=0, atol=1e-6)
    assert len([p for p in run.iterdir() if p.name.startswith("best_")]) == 2  # one pair
    assert not any(p.name.startswith(".") for p in run.iterdir())


def test_resolve_run(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no run folder toy_lora_r1_a1_lr1e-1_<timestamp>"):
        resolve_run(PLAN, tmp_path, resume=True)
    now = datetime(2026, 12, 1, 9, 30, 5)
    first = new_run_dir(tmp_path, "run", now)
    assert first.name == "run_20261201_093005"
    first.mkdir()
    assert new_run_dir(tmp_path, "run", now).name == "run_20261201_093005-2"
    # A checkpoint of a run folder elsewhere: a new run folder here starts from it.
    other = tmp_path / "elsewhere" / "run_20261201_093005" / "latest_lora_step4"
    other.mkdir(parents=True)
    (other / "trainer_state.json").write_text("{}")
    layout, checkpoint = resolve_run(LayoutPlan("sam2_lora", "run"), tmp_path / "out", other)
    assert checkpoint == other and layout.run_dir.parent == tmp_path / "out"
    # The run folder itself: its latest checkpoint, and the run goes on there.
    layout, checkpoint = resolve_run(LayoutPlan("sam2_lora", "run"), tmp_path, other.parent)
    assert (layout.run_dir, checkpoint) == (other.parent, other)


@pytest.mark.parametrize(
    ("lr", "text"),
    [(1e-3, "1e-3"), (3e-3, "3e-3"), (2.5e-4, "2.5e-4"), (0.1, "1e-1"), (5e-6, "5e-6")],
)
def test_learning_rate_in_run_names(lr: float, text: str) -> None:
    assert format_learning_rate(lr) == text


REPO = Path(__file__).resolve().parents[1]
BASE_PLUS = "sam2_base-plus_lora_r8_a16_lr1e-3"


@pytest.mark.parametrize(
    ("preset", "overrides", "kind", "run_name"),
    [
        ("sam2_lora", {}, "sam2_lora", "sam2_large_lora_r8_a16_lr1e-3"),
        ("sam2_quickstart", {}, "sam2_lora", "sam2_tiny_lora_r8_a16_lr3e-3"),
        ("sam2_lora", {"model.name_or_path": "sam2.1-base-plus-size"}, "sam2_lora", BASE_PLUS),
        ("sam2_lora", {"output.layout": "standard"}, "standard", ""),
        ("sam2_full_ft", {}, "standard", ""),
        ("quickstart", {}, "standard", ""),  # SAM3 keeps its folders
    ],
)
def test_layout_plan_from_config(preset: str, overrides: dict, kind: str, run_name: str) -> None:
    from sam3_lora.training import layout_plan

    plan = layout_plan(load_config(REPO / "configs" / f"{preset}.yaml", overrides))
    assert plan.kind == kind
    assert plan.run_name == run_name
    if kind == "sam2_lora":
        assert plan.best_metrics == (("iou", "val/miou"), ("dice", "val/dice"))


def test_named_layout_refuses_full_mode() -> None:
    from sam3_lora.errors import ConfigError

    with pytest.raises(ConfigError, match="output.layout sam2_lora names LoRA adapter folders"):
        load_config(REPO / "configs" / "sam2_full_ft.yaml", {"output.layout": "sam2_lora"})
