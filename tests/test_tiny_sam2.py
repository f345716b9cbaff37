"""The shipped tiny SAM2 (``assets/tiny-sam2``, installed as package data ``sam3_lora.assets``) and
its builder, ``scripts/build_tiny_sam2.py``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from transformers import Sam2Model, Sam2Processor

from sam3_lora.data.coco import CocoDataset
from sam3_lora.data.synthetic import generate_shapes_dataset
from sam3_lora.paths import asset_dir
from sam3_lora.tasks.promptable import tiny
from sam3_lora.tasks.promptable.loss import PromptableLoss
from sam3_lora.tasks.promptable.module import PromptableModel
from sam3_lora.tasks.promptable.samples import PromptDataset, collate_prompt_samples
from sam3_lora.tasks.promptable.spec import ImageInput
from sam3_lora.tasks.promptable.validation import summarize, validation_step

REPO = Path(__file__).resolve().parents[1]
#: Where the installed package keeps the model (no fallback to this checkout's assets/).
ASSET = asset_dir("tiny-sam2")
SCRIPT = REPO / "scripts" / "build_tiny_sam2.py"


def test_shipped_tiny_sam2_is_small_plain_and_segments_its_shapes(tmp_path: Path) -> None:
    size = sum(f.stat().st_size for f in ASSET.iterdir())
    assert size < 15 * 2**20
    info = json.loads((ASSET / "build_info.json").read_text())
    assert {"args", "validation", "build_seconds", "steps", "parameters"} <= set(info)
    model = Sam2Model.from_pretrained(ASSET)
    processor = Sam2Processor.from_pretrained(ASSET)
    assert sum(p.numel() for p in model.parameters()) == info["parameters"]
    # The build's validation images depend only on (seed, style, split, index): regenerate the
    # first 16 and check the recorded box / click mIoU, within sampling noise.
    args = info["args"]
    root = generate_shapes_dataset(
        tmp_path / "shapes",
        num_train=1,
        num_val=16,
        seed=args["seed"],
        image_size=args["resolution"],
        progress=False,
    )
    dataset = PromptDataset(
        CocoDataset.from_split_dir(root / "valid"),
        ImageInput.from_processor(processor),
        train=False,
        max_objects_per_image=8,
    )
    batch = collate_prompt_samples([dataset[i] for i in range(len(dataset))])
    module = PromptableModel(model.eval())
    with torch.no_grad():
        box = summarize([validation_step(module, PromptableLoss(), batch)])
        point = summarize([validation_step(module, PromptableLoss(), batch, prompt="point")])
    assert box["val/miou"] > info["validation"]["val/miou"] - 0.1, box
    assert point["val/miou"] > info["validation"]["val/point_miou"] - 0.1, point


def test_build_script_at_a_toy_size(tmp_path: Path) -> None:
    output = tmp_path / "tiny"
    arguments = [
        sys.executable,
        str(SCRIPT),
        *("--output", str(output), "--work_dir", str(tmp_path / "work")),
        *("--data_dir", str(tmp_path / "data"), "--steps", "3", "--eval_steps", "3"),
        *("--num_train", "6", "--num_val", "3", "--batch_size", "2", "--threads", "1"),
    ]
    subprocess.run(arguments, check=True, capture_output=True, text=True, timeout=600)
    info = json.loads((output / "build_info.json").read_text())
    assert info["steps"] == 3 and info["images_seen"] == 6
    assert {"val/miou", "val/dice", "val/point_miou", "val/point_dice"} <= set(info["validation"])
    assert info["args"]["steps"] == 3 and info["build_seconds"] > 0
    assert isinstance(Sam2Model.from_pretrained(output), Sam2Model)
    assert Sam2Processor.from_pretrained(output).image_processor.size["height"] == 128


def test_the_tiny_alias_is_the_shipped_folder() -> None:
    from sam3_lora.models import load_model

    assert tiny.tiny_sam2_dir() == ASSET and (ASSET / "config.json").is_file()
    loaded = load_model("tiny", "sam2")
    assert type(loaded.model) is Sam2Model and loaded.spec.family == "sam2"
    assert loaded.model.name_or_path == "tiny"
