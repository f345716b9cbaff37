"""SAM3-LoRA per-image JSON: round trip and mismatched lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sam3_lora.data.coco import CocoDataset
from sam3_lora.data.convert.per_image_json import convert_per_image_json
from sam3_lora.errors import DatasetError
from tests.data_factory import (
    assert_box_within_a_pixel,
    assert_mask_within_a_pixel,
    polygon_mask,
    write_image,
)


def _write(root: Path, record: dict) -> None:
    write_image(root / "images" / "img001.jpg", 40, 30)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "img001.json").write_text(json.dumps(record))


def test_round_trip(tmp_path: Path) -> None:
    polygon = [[5, 5], [20, 5], [20, 18], [5, 18]]
    _write(
        tmp_path / "in",
        {
            "bboxes": [[5, 5, 20, 18], [25, 2, 35, 9]],
            "masks": [polygon, None],
            "labels": ["leaf", "bug"],
        },
    )
    result = convert_per_image_json(tmp_path / "in", tmp_path / "data")
    assert (result.annotations, result.box_only) == (2, 1)
    dataset = CocoDataset.from_split_dir(tmp_path / "data" / "train")
    leaf, bug = dataset.instances(0)
    assert dataset.category(leaf.category_id).name == "leaf"
    assert_mask_within_a_pixel(leaf.mask, polygon_mask([5, 5, 20, 5, 20, 18, 5, 18], 40, 30))
    assert_box_within_a_pixel(leaf.box_xyxy, [5, 5, 20, 18])
    assert bug.mask is None
    assert_box_within_a_pixel(bug.box_xyxy, [25, 2, 35, 9])


def test_unlabelled_objects_get_class_name(tmp_path: Path) -> None:
    _write(tmp_path / "in", {"masks": [[[1, 1], [9, 1], [9, 9]]]})
    convert_per_image_json(tmp_path / "in", tmp_path / "data", class_name="defect")
    dataset = CocoDataset.from_split_dir(tmp_path / "data" / "train")
    assert [c.name for c in dataset.categories] == ["defect"]


def test_mismatched_lists(tmp_path: Path) -> None:
    _write(tmp_path / "in", {"bboxes": [[1, 1, 5, 5]], "masks": []})
    convert_per_image_json(tmp_path / "in", tmp_path / "ok")
    _write(tmp_path / "in2", {"bboxes": [[1, 1, 5, 5]], "masks": [None, None]})
    with pytest.raises(DatasetError, match=r"img001\.json: 1 bboxes but 2 masks"):
        convert_per_image_json(tmp_path / "in2", tmp_path / "data")
