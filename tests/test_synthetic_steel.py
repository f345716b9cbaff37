"""The steel-defect synthetic style: deterministic COCO, reuse, masks that match their boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sam3_lora.cli import main
from sam3_lora.data.coco import CocoDataset
from sam3_lora.data.synthetic_steel import ensure_steel_dataset, generate_steel_dataset
from sam3_lora.errors import ConfigError


def test_steel_dataset_is_deterministic_and_reused(tmp_path: Path) -> None:
    first = generate_steel_dataset(tmp_path / "a", num_train=6, num_val=3, seed=2, progress=False)
    second = generate_steel_dataset(tmp_path / "b", num_train=6, num_val=3, seed=2, progress=False)
    for split in ("train", "valid"):
        a = (first / split / "_annotations.coco.json").read_bytes()
        assert a == (second / split / "_annotations.coco.json").read_bytes()
        assert (first / split / "steel_00000.png").read_bytes() == (
            second / split / "steel_00000.png"
        ).read_bytes()
    stamp = (first / "train" / "_annotations.coco.json").stat().st_mtime_ns
    reused = ensure_steel_dataset(first, num_train=6, num_val=3, seed=2, progress=False)
    assert (reused / "train" / "_annotations.coco.json").stat().st_mtime_ns == stamp
    other = ensure_steel_dataset(first, num_train=6, num_val=3, seed=3, progress=False)
    assert (other / "train" / "_annotations.coco.json").read_bytes() != a

    coco = CocoDataset.from_split_dir(first / "train")
    assert [c.name for c in coco.categories] == ["scratch", "blob"]
    count = 0
    for index in range(len(coco)):
        pixels = np.asarray(coco.load_image(index))
        assert pixels.shape == (128, 128, 3) and pixels.std() > 3  # textured, not flat
        for instance in coco.instances(index):
            ys, xs = np.nonzero(instance.mask)
            assert instance.mask.sum() >= 12
            assert np.allclose(instance.box_xyxy, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            count += 1
    assert count >= len(coco)  # at least one defect per image


def test_steel_parameters_and_cli(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 64 pixels"):
        generate_steel_dataset(tmp_path / "x", image_size=32)
    with pytest.raises(ConfigError, match="defects_per_image"):
        generate_steel_dataset(tmp_path / "x", defects_per_image=(3, 1))
    arguments = ["data", "synth", "--output", str(tmp_path / "cli"), "--style", "steel"]
    assert main([*arguments, "--num_train", "2", "--num_val", "1", "--image_size", "96"]) == 0
    assert len(CocoDataset.from_split_dir(tmp_path / "cli" / "valid")) == 1
