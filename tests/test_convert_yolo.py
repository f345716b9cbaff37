"""YOLO labels: polygons and boxes round trip, class names, split folders, real exports."""

from __future__ import annotations

from pathlib import Path

import pytest

from sam3_lora.data.coco import CocoDataset
from sam3_lora.data.convert.yolo import convert_yolo, load_class_names
from sam3_lora.errors import DatasetError
from tests.data_factory import (
    assert_box_within_a_pixel,
    assert_mask_within_a_pixel,
    polygon_mask,
    shared_data,
    write_image,
)

WIDTH, HEIGHT = 40, 30
POLYGON_PX = [4.0, 3.0, 20.0, 3.0, 20.0, 15.0, 4.0, 15.0]


def _yolo_folder(root: Path, split: str = "") -> Path:
    folder = root / split if split else root
    write_image(folder / "images" / "img.jpg", WIDTH, HEIGHT)
    write_image(folder / "images" / "empty.jpg", WIDTH, HEIGHT)
    (folder / "labels").mkdir(parents=True)
    normalised = [v / (WIDTH if i % 2 == 0 else HEIGHT) for i, v in enumerate(POLYGON_PX)]
    polygon_line = "1 " + " ".join(f"{v:.6f}" for v in normalised)
    box_line = f"0 {30 / WIDTH} {20 / HEIGHT} {10 / WIDTH} {8 / HEIGHT}"
    (folder / "labels" / "img.txt").write_text(f"{polygon_line}\n{box_line}")  # no final newline
    return root


def test_round_trip_polygon_and_box(tmp_path: Path) -> None:
    (result,) = convert_yolo(
        _yolo_folder(tmp_path / "yolo"), tmp_path / "data", "train", classes="car, person"
    )
    assert (result.images, result.annotations, result.box_only) == (2, 2, 1)
    assert any("boxes only" in w for w in result.warnings)
    dataset = CocoDataset.from_split_dir(tmp_path / "data" / "train")
    index = [i.file_name for i in dataset.images].index("img.jpg")
    person, car = dataset.instances(index)
    assert dataset.category(person.category_id).name == "person"
    assert_mask_within_a_pixel(person.mask, polygon_mask(POLYGON_PX, WIDTH, HEIGHT))
    assert_box_within_a_pixel(person.box_xyxy, [4, 3, 20, 15])
    assert dataset.category(car.category_id).name == "car" and car.mask is None
    assert_box_within_a_pixel(car.box_xyxy, [25, 16, 35, 24])
    assert dataset.instances(1 - index) == []  # an image without a label file is a negative


def test_split_folders_and_data_yaml(tmp_path: Path) -> None:
    root = tmp_path / "yolo"
    _yolo_folder(root, "train")
    _yolo_folder(root, "valid")
    (root / "data.yaml").write_text("names:\n  0: car\n  1: person\n")
    assert load_class_names(yolo_dir=root) == ["car", "person"]
    results = convert_yolo(root, tmp_path / "data", None)
    assert [r.annotation_file.parent.name for r in results] == ["train", "valid"]


def test_unknown_class_index(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"img\.txt, line 1: class 1 but only 1 class names"):
        convert_yolo(_yolo_folder(tmp_path / "yolo"), tmp_path / "data", "train", classes="car")


def test_real_feral_cats_renamed_label_folders(tmp_path: Path) -> None:
    root = shared_data("yolo_seg/roboflow-feral-cat-seg")
    results = convert_yolo(root, tmp_path, None)
    counts = {r.annotation_file.parent.name: (r.images, r.annotations) for r in results}
    assert counts == {"test": (10, 55), "train": (3, 69)}
    dataset = CocoDataset.from_split_dir(tmp_path / "train")
    assert [c.name for c in dataset.categories] == ["cat"]
    assert all(inst.mask is not None for inst in dataset.instances(0))


def test_real_parking_boxes(tmp_path: Path) -> None:
    root = shared_data("yolo_box/roboflow-parking-space")
    results = convert_yolo(root, tmp_path, None)
    assert sum(r.annotations for r in results) == 238
    assert sum(r.box_only for r in results) == 238
    names = [c.name for c in CocoDataset.from_split_dir(tmp_path / "train").categories]
    assert names == ["CarIn", "GateClosed", "GateOpened"] or sorted(names) == sorted(
        ["CarIn", "GateClosed", "GateOpened"]
    )


def test_undecodable_file_name_is_sanitised(tmp_path: Path) -> None:
    import os

    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    name = os.fsdecode(b"caf\xe9")
    write_image(root / "images" / f"{name}.png", 16, 16)
    (root / "labels" / f"{name}.txt").write_text("0 0.5 0.5 0.25 0.25\n")
    convert_yolo(root, tmp_path / "data", "train", classes="dot")
    dataset = CocoDataset.from_split_dir(tmp_path / "data" / "train")
    assert dataset.images[0].file_name == "caf_.png"
    assert len(dataset.instances(0)) == 1 and dataset.load_image(0).size == (16, 16)
