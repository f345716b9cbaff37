"""The README quick start, run exactly as written (``sam3-lora train`` with no arguments).

End to end on the shipped tiny SAM3: generates the shifted dataset, validates the base model,
trains the LoRA adapter for the full 800 steps, and must end measurably better than the base on
the new domain. The slowest test of the suite (about 4 minutes on 2 CPU cores).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sam3_lora.cli import main


def test_readme_quick_start_adapts_the_tiny_sam3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # a fresh checkout: no data/, no outputs/
    assert main(["train"]) == 0
    out = capsys.readouterr().out
    assert "base vs adapted" in out

    run = tmp_path / "outputs" / "quickstart"
    for name in ("curves.png", "metrics.csv", "config.yaml", "final/adapter_model.safetensors"):
        assert (run / name).is_file(), name
    assert (tmp_path / "data" / "shapes-shifted" / "train" / "_annotations.coco.json").is_file()

    summary = json.loads((run / "training_summary.json").read_text())
    base, adapted = summary["base_metrics"], summary["final_metrics"]
    assert summary["steps"] == 800
    assert adapted["val/loss"] < 0.8 * base["val/loss"], (base, adapted)
    assert adapted["val/top1_iou"] > base["val/top1_iou"] + 0.1, (base, adapted)
    assert adapted["val/absent_fire_rate"] < 0.5 * base["val/absent_fire_rate"], (base, adapted)
    assert adapted["val/giou"] > base["val/giou"] + 0.05, (base, adapted)
    # at the tiny model's operating point (configs/quickstart.yaml), for base and adapter alike
    assert adapted["val/miou"] > base["val/miou"] + 0.03, (base, adapted)
    assert adapted["val/dice"] > base["val/dice"] + 0.02, (base, adapted)
