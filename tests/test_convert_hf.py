"""Hugging Face datasets: a small local dataset saved to disk (no network)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam3_lora.data.coco import CocoDataset
from sam3_lora.data.convert.hf import convert_hf
from sam3_lora.errors import DatasetError
from tests.data_factory import assert_box_within_a_pixel, assert_mask_within_a_pixel, polygon_mask

datasets = pytest.importorskip("datasets")


def _saved_dataset(root: Path) -> Path:
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "objects": {
                "bbox": datasets.Sequence(datasets.Sequence(datasets.Value("float32"), length=4)),
                "category": datasets.Sequence(datasets.ClassLabel(names=["cat", "dog"])),
                "segmentation": datasets.Sequence(
                    datasets.Sequence(datasets.Sequence(datasets.Value("float32")))
                ),
            },
        }
    )

    def png(colour: int) -> dict:
        buffer = io.BytesIO()
        Image.new("RGB", (40, 30), (colour, 0, 0)).save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}

    rows = {
        "image": [png(10), png(200)],
        "objects": [
            {
                "bbox": [[2, 3, 10, 8]],
                "category": [1],
                "segmentation": [[[2, 3, 12, 3, 12, 11, 2, 11]]],
            },
            {"bbox": [[20, 5, 5, 5], [1, 1, 3, 3]], "category": [0, 1], "segmentation": [[], []]},
        ],
    }
    train = datasets.Dataset.from_dict(rows, features=features)
    dataset = datasets.DatasetDict({"train": train, "validation": train.select([1])})
    dataset.save_to_disk(str(root))
    return root


def test_round_trip_from_disk(tmp_path: Path) -> None:
    results = convert_hf(_saved_dataset(tmp_path / "hf"), tmp_path / "data")
    assert [r.annotation_file.parent.name for r in results] == ["train", "valid"]
    dataset = CocoDataset.from_split_dir(tmp_path / "data" / "train")
    assert [c.name for c in dataset.categories] == ["cat", "dog"]
    (dog,) = dataset.instances(0)
    assert dataset.category(dog.category_id).name == "dog"
    assert_mask_within_a_pixel(dog.mask, polygon_mask([2, 3, 12, 3, 12, 11, 2, 11], 40, 30))
    assert_box_within_a_pixel(dog.box_xyxy, [2, 3, 12, 11])
    cat, _ = dataset.instances(1)
    assert cat.mask is None and dataset.category(cat.category_id).name == "cat"
    assert_box_within_a_pixel(cat.box_xyxy, [20, 5, 25, 10])
    assert np.asarray(dataset.load_image(1))[0, 0, 0] == 200  # bytes written as stored


def test_one_split_and_missing_column(tmp_path: Path) -> None:
    saved = _saved_dataset(tmp_path / "hf")
    results = convert_hf(saved, tmp_path / "data", "validation")
    assert [r.images for r in results] == [1]
    with pytest.raises(DatasetError, match=r"split 'train' has no column 'objs'"):
        convert_hf(saved, tmp_path / "other", objects_column="objs")
    with pytest.raises(DatasetError, match="cannot load Hugging Face dataset"):
        convert_hf(tmp_path / "not-a-dataset", tmp_path / "x")
