from __future__ import annotations

from pathlib import Path

import pytest

from sam3_lora.cli import main

FULL_FT = str(Path(__file__).resolve().parents[1] / "configs" / "full_ft.yaml")


def test_param_groups_of_a_full_run_on_the_released_size(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["param-groups", "--config", FULL_FT, "--model", "sam3-size"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 4}
    assert "2.250e-05" in rows["vision_encoder.layer32"]  # block 31 of 32: 2.5e-5 x 0.9
    assert "7.726e-07" in rows["vision_encoder.layer0"]  # patch embedding: 2.5e-5 x 0.9^33
    assert "5.000e-06" in rows["text_encoder"] and "8.000e-05" in rows["detr_decoder"]
    assert "840,376,374" in rows["78 groups"]


def test_param_groups_of_a_lora_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["param-groups", "--config", "balanced", "--model", "tiny-random"]) == 0
    out = capsys.readouterr().out
    assert "LoRA on tiny-random" in out and "no_decay" in out and "1.000e-04" in out


def test_lora_info_points_full_runs_to_param_groups(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lora-info", "--config", FULL_FT, "--model", "tiny-random"]) == 0
    assert "sam3-lora param-groups" in capsys.readouterr().out
