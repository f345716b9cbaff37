"""VIA JSON: round trip, real droplets file, missing images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sam3_lora.data.coco import CocoDataset
from sam3_lora.data.convert.via import convert_via
from sam3_lora.errors import DatasetError
from tests.data_factory import assert_box_within_a_pixel, shared_data, write_image


def test_round_trip_regions(tmp_path: Path) -> None:
    write_image(tmp_path / "in" / "a.jpg", 40, 30)
    regions = {
        "0": {
            "shape_attributes": {
                "name": "polygon",
                "all_points_x": [2, 12, 12, 2],
                "all_points_y": [2, 2, 10, 10],
            },
            "region_attributes": {"type": "leaf"},
        },
        "1": {
            "shape_attributes": {"name": "rect", "x": 20, "y": 5, "width": 8, "height": 6},
            "region_attributes": {},
        },
    }
    via = {"a.jpg123": {"filename": "a.jpg", "size": 123, "regions": regions}}
    (tmp_path / "in" / "via.json").write_text(json.dumps(via))
    result = convert_via(tmp_path / "in" / "via.json", None, tmp_path / "data")
    assert result.annotations == 2
    dataset = CocoDataset.from_split_dir(tmp_path / "data" / "train")
    leaf, box = dataset.instances(0)
    assert dataset.category(leaf.category_id).name == "leaf"
    assert dataset.category(box.category_id).name == "object"
    assert_box_within_a_pixel(leaf.box_xyxy, [2, 2, 12, 10])
    assert_box_within_a_pixel(box.box_xyxy, [20, 5, 28, 11])


def test_real_droplets(tmp_path: Path) -> None:
    root = shared_data("via/tracking-droplets-val")
    result = convert_via(root / "via_region_data.json", None, tmp_path, class_name="droplet")
    assert (result.images, result.annotations) == (2, 63)


def test_real_balloon_missing_images(tmp_path: Path) -> None:
    path = shared_data("via/matterport-balloon-val-annotations-only") / "via_region_data.json"
    with pytest.raises(DatasetError, match=r"via_region_data\.json: entry '.*\.jpg\d+': image"):
        convert_via(path, None, tmp_path)
    result = convert_via(path, None, tmp_path, skip_missing=True)
    assert (result.images, result.skipped) == (0, 13)
