"""LabelMe: shapes, group ids, embedded images, and agreement with labelme's own COCO export."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from sam3_lora.data.coco import CocoDataset
from sam3_lora.data.convert.labelme import convert_labelme
from tests.data_factory import (
    assert_box_within_a_pixel,
    assert_mask_within_a_pixel,
    polygon_mask,
    shared_data,
    write_image,
)


def _shape(label, points, shape_type="polygon", group_id=None, **extra):
    return {
        "label": label,
        "points": points,
        "shape_type": shape_type,
        "group_id": group_id,
        **extra,
    }


def test_round_trip_shapes(tmp_path: Path) -> None:
    write_image(tmp_path / "in" / "img.png", 40, 30)
    small = Image.fromarray(np.ones((4, 5), dtype=np.uint8))
    buffer = io.BytesIO()
    small.save(buffer, format="PNG")
    shapes = [
        _shape("cat", [[2, 2], [10, 2], [10, 10]]),
        _shape("box", [[20, 5], [30, 12]], "rectangle"),
        _shape("dog", [[2, 20], [6, 20], [6, 26], [2, 26]], group_id=1),
        _shape("dog", [[10, 20], [14, 20], [14, 26], [10, 26]], group_id=1),
        _shape("ball", [[30, 22], [34, 22]], "circle"),
        _shape(
            "blob", [[33, 1], [37, 4]], "mask", mask=base64.b64encode(buffer.getvalue()).decode()
        ),
        _shape("edge", [[0, 0], [5, 5]], "line"),
        _shape("__ignore__", [[0, 0], [3, 0], [3, 3]]),
    ]
    record = {
        "version": "5.7.0",
        "shapes": shapes,
        "imagePath": "img.png",
        "imageData": None,
        "imageHeight": 30,
        "imageWidth": 40,
    }
    (tmp_path / "in" / "img.json").write_text(json.dumps(record))
    result = convert_labelme(tmp_path / "in", tmp_path / "data")
    assert (result.annotations, result.skipped) == (5, 1)
    dataset = CocoDataset.from_split_dir(tmp_path / "data" / "train")
    by_name = {dataset.category(i.category_id).name: i for i in dataset.instances(0)}
    assert set(by_name) == {"cat", "box", "dog", "ball", "blob"}
    assert_mask_within_a_pixel(by_name["cat"].mask, polygon_mask([2, 2, 10, 2, 10, 10], 40, 30))
    assert_box_within_a_pixel(by_name["box"].box_xyxy, [20, 5, 30, 12])
    dog = by_name["dog"].mask
    assert dog[23, 4] and dog[23, 12] and not dog[23, 8]  # two parts, one instance
    assert_box_within_a_pixel(by_name["ball"].box_xyxy, [26, 18, 34, 26])
    assert by_name["blob"].mask.sum() == 20 and by_name["blob"].mask[1:5, 33:38].all()


def test_embedded_image_data(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 9), (1, 2, 3)).save(buffer, format="JPEG")
    record = {
        "shapes": [_shape("a", [[1, 1], [5, 1], [5, 5]])],
        "imagePath": "self.json",
        "imageData": base64.b64encode(buffer.getvalue()).decode(),
        "imageHeight": 9,
        "imageWidth": 12,
    }
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "self.json").write_text(json.dumps(record))
    convert_labelme(tmp_path / "in", tmp_path / "data")
    dataset = CocoDataset.from_split_dir(tmp_path / "data" / "train")
    assert dataset.images[0].file_name == "self.jpg" and dataset.load_image(0).size == (12, 9)


def test_real_examples_match_labelme2coco(tmp_path: Path) -> None:
    root = shared_data("labelme/wkentaro-labelme-examples")
    reference_root = shared_data("coco_polygon/labelme2coco-voc2011")
    result = convert_labelme(root, tmp_path)
    assert result.images == 5
    ours = CocoDataset.from_split_dir(tmp_path / "train")
    reference = CocoDataset(reference_root / "annotations.json")
    for ref_index, image in enumerate(reference.images):
        name = Path(image.file_name).name
        index = [i.file_name for i in ours.images].index(name)
        expected = reference.instances(ref_index)
        actual = ours.instances(index)
        assert len(actual) == len(expected)
        for exp in expected:
            ious = [(a.mask & exp.mask).sum() / (a.mask | exp.mask).sum() for a in actual]
            assert max(ious) > 0.95
