"""The SAM2 quick start, run as docs/sam2.md says (``sam3-lora train --config
configs/sam2_quickstart.yaml``).

End to end on the shipped tiny SAM2: generates the steel-defect dataset, validates the base model,
trains the LoRA adapter, and must end clearly better than the base on the new domain, for box
prompts and for single clicks, at the default mask threshold. About 2-4 minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sam3_lora.cli import main
from sam3_lora.tasks.promptable import tiny

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "sam2_quickstart.yaml"


@pytest.fixture
def shipped_tiny_sam2() -> Path:
    """``--model tiny`` is the installed package's ``sam3_lora.assets/tiny-sam2``."""
    folder = tiny.tiny_sam2_dir()
    assert (folder / "model.safetensors").is_file(), f"{folder}: reinstall the package"
    return folder


@pytest.fixture
def one_thread() -> object:
    """A shared 2-core machine: one intra-op thread avoids the spin-wait of two under load."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_sam2_quick_start_adapts_the_tiny_sam2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    shipped_tiny_sam2: Path,
    one_thread: None,
) -> None:
    monkeypatch.chdir(tmp_path)  # a fresh checkout: no data/, no outputs/
    assert main(["train", "--config", str(QUICKSTART)]) == 0
    out = capsys.readouterr().out
    assert "base vs adapted" in out and "val/point_miou" in out

    # The SAM2-LoRA layout: outputs/sam2_quickstart/sam2_tiny_lora_r8_a16_lr3e-3_<timestamp>/.
    (run,) = (tmp_path / "outputs" / "sam2_quickstart").glob("sam2_tiny_lora_r8_a16_lr3e-3_*")
    stamp = run.name.rsplit("_lr3e-3_", 1)[1]
    for name in (
        "curves.png",
        f"logs/training_metrics_lora_{stamp}.csv",
        "config.yaml",
        "final_lora_step500/adapter_model.safetensors",
        "latest_lora_step500/adapter_model.safetensors",
    ):
        assert (run / name).is_file(), name
    assert not (run / "latest_lora_step250").exists()  # save_total_limit: 1
    best = sorted(p.name for p in run.glob("best_*"))
    assert len(best) == 2 and best[0].startswith("best_lora_step"), best
    assert best[1] == best[0].replace("best_lora_", "best_merged_")
    assert (run / best[1] / "model.safetensors").is_file()
    valid = tmp_path / "data" / "steel-defects" / "valid" / "_annotations.coco.json"
    assert json.loads(valid.read_text())["categories"][0]["name"] == "scratch"

    summary = json.loads((run / "training_summary.json").read_text())
    assert best[0] == (
        f"best_lora_step{summary['best_step']}_iou{summary['best_value']:.4f}_"
        + best[0].rsplit("_", 1)[1]
    )
    base, adapted = summary["base_metrics"], summary["final_metrics"]
    for key in ("val/miou", "val/dice", "val/point_miou", "val/point_dice"):
        assert adapted[key] > base[key] + 0.1, (key, base, adapted)
    assert adapted["val/loss"] < 0.8 * base["val/loss"], (base, adapted)
