"""``scripts/build_tiny_sam3.py`` end to end at a toy size: train, save, measure, reload."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from transformers import Sam3Model

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_tiny_sam3.py"


def test_build_writes_a_loadable_model_with_its_operating_point(tmp_path: Path) -> None:
    output = tmp_path / "tiny"
    args = [
        sys.executable,
        str(SCRIPT),
        *("--output", str(output), "--work_dir", str(tmp_path / "work")),
        *("--data_dir", str(tmp_path / "data"), "--steps", "4", "--eval_steps", "4"),
        *("--num_train", "8", "--num_val", "4", "--batch_size", "2", "--threads", "1"),
    ]
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=600)

    info = json.loads((output / "build_info.json").read_text())
    assert info["steps"] == 4 and info["images_seen"] == 8
    point = info["operating_point"]
    assert len(point["sweep"]) == 9  # scores 0.1 ... 0.9
    assert point["score_threshold"] == max(point["sweep"], key=lambda r: r["giou"])["threshold"]
    assert isinstance(Sam3Model.from_pretrained(output), Sam3Model)

    # --measure_only re-measures the saved model on the same (regenerated) validation images
    before = point["sweep"]
    info_file = output / "build_info.json"
    info_file.write_text(json.dumps({k: v for k, v in info.items() if k != "operating_point"}))
    measure = [*args[:2], "--output", str(output), "--work_dir", str(tmp_path / "again")]
    subprocess.run([*measure, "--measure_only"], check=True, capture_output=True, timeout=600)
    assert json.loads(info_file.read_text())["operating_point"]["sweep"] == before
