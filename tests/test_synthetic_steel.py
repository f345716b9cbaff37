"""The steel-defect synthetic style: deterministic COCO, reuse, masks that match their boxes."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import numpy as np
import pytest

from sam3_lora.cli import main
from sam3_lora.config import SyntheticSettings, validate_config
from sam3_lora.data.coco import CocoDataset
from sam3_lora.data.sources import open_config_split, resolve_data_splits, synthetic_root
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


@pytest.mark.parametrize("style", get_args(SyntheticSettings.model_fields["style"].annotation))
def test_synthetic_root_generates_every_style(tmp_path: Path, style: str) -> None:
    """Whatever resolves a config's ``data.synthetic`` (training, evaluation, prediction of
    every family) generates each style the schema accepts."""
    synthetic = {"output_dir": str(tmp_path / style), "style": style, "num_train": 2}
    config = validate_config({"data": {"synthetic": {**synthetic, "num_val": 1}}})
    root = synthetic_root(config)
    train, valid = resolve_data_splits(config)
    assert (len(train), len(valid)) == (2, 1)
    assert Path(train.annotation_file).parent == root / "train"
    assert open_config_split(config, "valid").categories == valid.categories


def test_steel_rejects_shape_options(tmp_path: Path) -> None:
    synthetic = {"output_dir": str(tmp_path), "style": "steel", "distractors": ["star"]}
    with pytest.raises(ConfigError, match="data.synthetic.distractors applies to the shapes"):
        synthetic_root(validate_config({"data": {"synthetic": synthetic}}))
