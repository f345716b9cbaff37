"""The promptable task through the engine: ``sam3-lora train`` on SAM2, resume, strict weights,
batches without objects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Sam2Model

from sam3_lora.cli import main
from sam3_lora.config import load_config
from sam3_lora.errors import CheckpointError
from sam3_lora.tasks.promptable.module import PromptableOutputs
from sam3_lora.training import build_recipe

REPO = Path(__file__).resolve().parents[1]
SAM2_LORA = REPO / "configs" / "sam2_lora.yaml"


@pytest.fixture
def one_thread() -> object:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _arguments(tmp_path: Path, output: str, *extra: str) -> list[str]:
    steel = (
        f"{{output_dir: {tmp_path / 'steel'}, style: steel, num_train: 6, num_val: 3, "
        "image_size: 128}"
    )
    return [
        "train",
        "--config",
        str(SAM2_LORA),
        "--model",
        "tiny-random",
        "--batch_size",
        "2",
        "--steps",
        "4",
        "--output_dir",
        str(tmp_path / output),
        "--set",
        "data.train=null",
        "--set",
        "data.valid=null",
        "--set",
        f"data.synthetic={steel}",
        "--set",
        "loss.correction_rounds=1",
        "--set",
        "training.num_workers=0",
        "--set",
        "training.save_steps=2",
        "--set",
        "training.eval_steps=2",
        "--set",
        "training.logging_steps=1",
        "--set",
        "output.tensorboard=false",
        *extra,
    ]


RUN_NAME = "sam2_tiny-random_lora_r8_a16_lr1e-3"  # {family}_{size}_lora_r{rank}_a{alpha}_lr{lr}


def _run_folder(output: Path) -> Path:
    (run,) = [p for p in output.iterdir() if p.is_dir() and p.name.startswith(RUN_NAME + "_")]
    return run


def test_train_resume_and_outputs(tmp_path: Path, one_thread: None) -> None:
    assert main(_arguments(tmp_path, "run")) == 0
    run = _run_folder(tmp_path / "run")  # output_dir holds the timestamped run folder
    stamp = run.name.removeprefix(RUN_NAME + "_")
    summary = json.loads((run / "training_summary.json").read_text())
    assert summary["steps"] == 4
    assert set(summary["final_metrics"]) >= {
        "val/miou",
        "val/dice",
        "val/point_miou",
        "val/point_dice",
        "val/loss",
    }
    assert set(summary["base_metrics"]) == set(summary["final_metrics"])
    for folder in ("final_lora_step4", "latest_lora_step2", "latest_lora_step4"):
        assert (run / folder / "adapter_model.safetensors").is_file(), folder
    config = json.loads((run / "final_lora_step4" / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16
    header = (run / "logs" / f"training_metrics_lora_{stamp}.csv").read_text().splitlines()[0]
    assert "train/loss" in header and "val/point_miou" in header and "lr" in header

    # One best pair, named after its step and validation IoU / Dice.
    best = sorted(p.name for p in run.iterdir() if p.name.startswith("best_"))
    step, miou = summary["best_step"], summary["best_value"]
    history = {row["step"]: row for row in summary_rows(run, stamp)}
    suffix = f"step{step}_iou{miou:.4f}_dice{history[step]['val/dice']:.4f}"
    assert best == [f"best_lora_{suffix}", f"best_merged_{suffix}"]
    merged = Sam2Model.from_pretrained(run / f"best_merged_{suffix}")  # a plain model folder
    assert (
        main(
            [
                "merge",
                "--adapter",
                str(run / f"best_lora_{suffix}"),
                "--output",
                str(tmp_path / "m"),
            ]
        )
        == 0
    )
    again = Sam2Model.from_pretrained(tmp_path / "m").state_dict()
    assert all(torch.equal(again[k], v) for k, v in merged.state_dict().items())

    # From a checkpoint of another output folder: a new run folder there, the same adapter.
    resumed = ["--resume", str(run / "latest_lora_step2")]
    assert main(_arguments(tmp_path, "resumed", *resumed)) == 0
    first = load_file(run / "final_lora_step4" / "adapter_model.safetensors")
    second = load_file(
        _run_folder(tmp_path / "resumed") / "final_lora_step4" / "adapter_model.safetensors"
    )
    assert all(torch.equal(first[k], second[k]) for k in first)

    assert main(_arguments(tmp_path, "run", "--eval-only")) == 0  # final_lora_step4 vs the base
    report = json.loads((run / "eval-valid" / "metrics.json").read_text())  # in the run folder
    assert set(report["models"]) == {"base", "adapter"}


def summary_rows(run: Path, stamp: str) -> list[dict]:
    """The validation rows of the run's metrics CSV."""
    from sam3_lora.engine.reporting import read_metrics_csv

    rows = read_metrics_csv(run / "logs" / f"training_metrics_lora_{stamp}.csv")
    return [row for row in rows if "val/dice" in row]


def test_empty_batches_and_strict_weights(tmp_path: Path, one_thread: None) -> None:
    overrides = {
        "model.name_or_path": "tiny-random",
        "data.train": None,
        "data.valid": None,
        "data.synthetic": {
            "output_dir": str(tmp_path / "steel"),
            "style": "steel",
            "num_train": 2,
            "num_val": 1,
        },
    }
    recipe = build_recipe(load_config(SAM2_LORA, overrides))
    task = recipe.task
    batch = task.collate([recipe.train_dataset[0]])
    losses = task.loss(PromptableOutputs(steps=[], num_objects=0), batch)
    assert losses["loss"].item() == 0.0
    losses["loss"].backward()
    trainable = [p for p in task.model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and not p.grad.any() for p in trainable)

    task.save_weights(tmp_path / "adapter")
    task.load_weights(tmp_path / "adapter")
    weights = tmp_path / "adapter" / "adapter_model.safetensors"
    state = load_file(weights)
    state.pop(next(iter(state)))
    save_file(state, weights)
    with pytest.raises(CheckpointError, match="missing"):
        task.load_weights(tmp_path / "adapter")
