from __future__ import annotations

import pytest

from sam3_lora.cli import main


def test_lora_info_prints_component_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lora-info", "--config", "balanced", "--model", "tiny-random"]) == 0
    out = capsys.readouterr().out
    assert "vision_encoder" in out and "mask_decoder" in out and "% of total" in out


def test_lora_info_sizes_the_released_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lora-info", "--config", "minimal", "--model", "sam3-size"]) == 0
    out = capsys.readouterr().out
    assert "524,288" in out and "840,376,374" in out


def test_config_error_is_one_line_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["lora-info", "--config", "balanced", "--model", "tiny-random", "--set", "lora.rnak=4"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "`lora.rnak`: unknown key; did you mean `lora.rank`?" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_flat_flags_override(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["lora-info", "--config", "minimal", "--model", "tiny-random", "--lora_rank", "2"])
        == 0
    )
    assert "rank 2" in capsys.readouterr().out
