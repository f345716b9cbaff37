"""Deterministic splitting, Roboflow variant grouping, the layout skeleton and stats/preview."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from sam3_lora.data.coco import CocoDataset
from sam3_lora.data.inspect import dataset_stats, render_preview
from sam3_lora.data.layout import create_layout
from sam3_lora.data.split import group_key, split_counts, split_dataset
from sam3_lora.errors import DatasetError
from tests.data_factory import coco_dict, write_coco


def _many_images(root: Path, count: int = 10) -> Path:
    data = coco_dict()
    data["images"] = [
        {"id": i, "file_name": f"img{i // 2}_jpg.rf.{i:04x}ab.jpg", "width": 16, "height": 12}
        for i in range(count)
    ]
    data["annotations"] = [
        {"id": 100 + i, "image_id": i, "category_id": 1, "bbox": [1, 1, 4, 4]} for i in range(count)
    ]
    write_coco(root / "train", data)
    return root


def test_split_counts() -> None:
    assert split_counts(10, [0.8, 0.1, 0.1]) == [8, 1, 1]
    assert sum(split_counts(7, [0.5, 0.25, 0.25])) == 7
    with pytest.raises(DatasetError, match="sum to 1"):
        split_counts(10, [0.8, 0.3])


def test_group_key() -> None:
    assert group_key("group0001_png.rf.f9d00bf3d8a9d9c54e5bf7bb14d8c428.jpg") == "group0001_png"
    assert group_key("plain.jpg") == "plain"


def test_split_is_deterministic_and_keeps_groups(tmp_path: Path) -> None:
    first = split_dataset(_many_images(tmp_path / "a"), [0.6, 0.2, 0.2], seed=3)
    second = split_dataset(
        _many_images(tmp_path / "b"), [0.6, 0.2, 0.2], seed=3, output_dir=tmp_path / "b_out"
    )
    assert [r.images for r in first] == [r.images for r in second] == [6, 2, 2]
    for split in ("train", "valid", "test"):
        names_a = [i.file_name for i in CocoDataset.from_split_dir(tmp_path / "a" / split).images]
        names_b = [
            i.file_name for i in CocoDataset.from_split_dir(tmp_path / "b_out" / split).images
        ]
        assert names_a == names_b
        assert len({group_key(n) for n in names_a}) * 2 == len(names_a)  # pairs stay together
    assert not (tmp_path / "a" / ".split-staging").exists()


def test_layout_and_stats_and_preview(tmp_path: Path) -> None:
    created = create_layout(tmp_path / "data")
    assert {p.name for p in created} == {"train", "valid", "test", "README.md"}
    write_coco(tmp_path / "data" / "train")
    (stats,) = dataset_stats(tmp_path / "data")
    assert (stats.images, stats.instances, stats.box_only, stats.crowd) == (2, 4, 1, 1)
    assert stats.per_category == {"cat": 2, "dog": 2}
    assert sum(stats.size_histogram) == 4
    path = render_preview(
        tmp_path / "data", tmp_path / "p.png", num_images=4, columns=2, tile_size=64
    )
    assert Image.open(path).size == (128, 64)
