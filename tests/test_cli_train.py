from __future__ import annotations

import json
from pathlib import Path

import pytest

from sam3_lora.cli import main
from sam3_lora.config import load_config


def _args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--model", "tiny-random",
        "--output_dir", str(tmp_path / "run"),
        "--set", f"data.synthetic.output_dir={tmp_path / 'shapes'}",
        "--set", "data.synthetic.num_train=4",
        "--set", "data.synthetic.num_val=2",
        "--set", "data.synthetic.image_size=96",
        "--set", "training.eval_steps=2",
        "--set", "training.save_steps=2",
        "--set", "output.tensorboard=false",
        *extra,
    ]  # fmt: skip


def test_quickstart_is_the_default_and_runs_offline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert load_config("quickstart").model.name_or_path == "tiny"
    assert main(_args(tmp_path, "--steps", "2")) == 0
    out = capsys.readouterr().out
    assert "LoRA on tiny-random" in out and "base vs adapted" in out and "val/top1_iou" in out
    run = tmp_path / "run"
    assert (run / "final" / "adapter_model.safetensors").is_file()
    summary = json.loads((run / "training_summary.json").read_text())
    assert summary["steps"] == 2 and "base_metrics" in summary

    assert main(_args(tmp_path, "--steps", "4", "--resume")) == 0
    assert json.loads((run / "training_summary.json").read_text())["steps"] == 4


def test_train_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--config", str(tmp_path / "missing.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and "missing.yaml not found" in err and "Traceback" not in err
    assert main(_args(tmp_path, "--steps", "2", "--resume", str(tmp_path / "nowhere"))) == 2
    assert "not a training checkpoint" in capsys.readouterr().err
