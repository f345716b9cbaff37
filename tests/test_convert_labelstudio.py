"""Label Studio JSON / JSON-MIN: percent coordinates, brushes, upload prefixes, missing images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sam3_lora.data.coco import CocoDataset
from sam3_lora.data.convert.labelstudio import convert_labelstudio, decode_brush_rle
from sam3_lora.errors import DatasetError
from tests.data_factory import (
    assert_box_within_a_pixel,
    assert_mask_within_a_pixel,
    encode_brush_rle,
    polygon_mask,
    shared_data,
    write_image,
)

W, H = 80, 60


def _brush() -> tuple[np.ndarray, list[int]]:
    alpha = np.zeros((H, W), dtype=np.uint8)
    alpha[10:20, 40:60] = 255
    alpha[30:32, 40:60] = 90  # soft pixels, below the threshold
    rgba = np.repeat(alpha[:, :, None], 4, axis=2)
    return alpha >= 128, encode_brush_rle(rgba)


def _result(kind: str, value: dict, region_id: str) -> dict:
    return {
        "id": region_id,
        "type": kind,
        "from_name": "label",
        "to_name": "image",
        "original_width": W,
        "original_height": H,
        "image_rotation": 0,
        "value": value,
    }


def _full_export(tmp_path: Path) -> Path:
    _, rle = _brush()
    results = [
        _result(
            "polygonlabels",
            {"points": [[10, 10], [40, 10], [40, 50]], "polygonlabels": ["Fire"]},
            "p1",
        ),
        _result(
            "rectanglelabels",
            {
                "x": 50,
                "y": 50,
                "width": 25,
                "height": 25,
                "rotation": 0,
                "rectanglelabels": ["Car"],
            },
            "r1",
        ),
        _result(
            "rectanglelabels",
            {
                "x": 10,
                "y": 60,
                "width": 20,
                "height": 10,
                "rotation": 90,
                "rectanglelabels": ["Car"],
            },
            "r2",
        ),
        _result(
            "ellipselabels",
            {
                "x": 75,
                "y": 25,
                "radiusX": 10,
                "radiusY": 10,
                "rotation": 0,
                "ellipselabels": ["Sun"],
            },
            "e1",
        ),
        _result("brushlabels", {"format": "rle", "rle": rle, "brushlabels": []}, "b1"),
        _result("labels", {"labels": ["Smoke"]}, "b1"),  # the same region's label control
        {"type": "relation", "from_id": "p1", "to_id": "b1"},
    ]
    tasks = [
        {
            "id": 1,
            "annotations": [{"id": 3, "result": results, "was_cancelled": False}],
            "file_upload": "5e2cfa6e-frame.1.jpg",
            "data": {"image": "/data/upload/4/5e2cfa6e-frame.1.jpg"},
        },
        {
            "id": 2,
            "annotations": [{"id": 4, "result": [results[0]]}],
            "data": {"image": "/data/upload/4/0a1b2c3d-not-here.jpg"},
        },
        {"id": 3, "annotations": [], "data": {"image": "/data/upload/4/unlabelled.jpg"}},
    ]
    write_image(tmp_path / "images" / "frame.1.jpg", W, H)  # the original name, no prefix
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks).replace("/", "\\/"))  # as Label Studio escapes them
    return path


def test_full_export_round_trip(tmp_path: Path) -> None:
    path = _full_export(tmp_path)
    result = convert_labelstudio(path, tmp_path / "images", tmp_path / "data")
    assert (result.images, result.missing, result.skipped) == (2, 1, 1)
    assert any(
        "not-here.jpg" in w and "sized from the annotation file" in w for w in result.warnings
    )
    dataset = CocoDataset.from_split_dir(tmp_path / "data" / "train")
    assert [i.file_name for i in dataset.images] == ["frame.1.jpg", "not-here.jpg"]
    assert (dataset.images[1].width, dataset.images[1].height) == (W, H)
    found = {dataset.category(i.category_id).name: [] for i in dataset.instances(0)}
    for instance in dataset.instances(0):
        found[dataset.category(instance.category_id).name].append(instance)
    (fire,) = found["Fire"]
    assert_mask_within_a_pixel(fire.mask, polygon_mask([8, 6, 32, 6, 32, 30], W, H))
    straight, rotated = found["Car"]
    assert straight.mask is None  # an unrotated rectangle is a box
    assert_box_within_a_pixel(straight.box_xyxy, [40, 30, 60, 45])
    assert_box_within_a_pixel(rotated.box_xyxy, [2, 36, 8, 52])  # turned about its corner
    (sun,) = found["Sun"]
    assert_box_within_a_pixel(sun.box_xyxy, [52, 9, 68, 21])
    (smoke,) = found["Smoke"]  # brush + its label control: one object, not two
    np.testing.assert_array_equal(smoke.mask, _brush()[0])


def test_json_min_regions_listed_twice_are_one_object(tmp_path: Path) -> None:
    mask, rle = _brush()
    region = {"format": "rle", "rle": rle, "original_width": W, "original_height": H}
    task = {
        "image": "/data/upload/19/374770ff-frame.1.jpg",
        "id": 91,
        "magicwand": [region],
        "labels": [dict(region, labels=["Fire"])],
        "annotator": 1,
        "annotation_id": 57,
    }
    write_image(tmp_path / "frame.1.jpg", W, H)
    path = tmp_path / "min.json"
    path.write_text(json.dumps([task]))
    result = convert_labelstudio(path, None, tmp_path / "data", mask_threshold=64)
    assert result.annotations == 1
    (instance,) = CocoDataset.from_split_dir(tmp_path / "data" / "train").instances(0)
    assert instance.area == mask.sum() + 40  # threshold 64 keeps the soft row


@pytest.mark.parametrize(
    ("tasks", "expected"),
    [
        ({"not": "tasks"}, r"task #0 is not a Label Studio task"),
        ([{"id": 5, "annotations": [{"result": []}], "data": {}}], r"task 5: no image reference"),
        ("nonsense", r"not a Label Studio export"),
        (
            [
                {
                    "id": 7,
                    "annotations": [
                        {
                            "result": [
                                _result(
                                    "polygonlabels",
                                    {"points": [[1, 1], [5, 5]], "polygonlabels": ["x"]},
                                    "ab",
                                )
                            ]
                        }
                    ],
                    "data": {"image": "a.png"},
                }
            ],
            r"task 7, region ab: polygon with 2 points",
        ),
        (
            [
                {
                    "id": 8,
                    "annotations": [
                        {
                            "result": [
                                _result(
                                    "brushlabels",
                                    {"format": "rle", "rle": [0, 0, 1], "brushlabels": ["x"]},
                                    "cd",
                                )
                            ]
                        }
                    ],
                    "data": {"image": "a.png"},
                }
            ],
            r"task 8, region cd: brush 'rle' ends early",
        ),
    ],
)
def test_broken_exports_name_file_task_and_region(tmp_path: Path, tasks, expected: str) -> None:
    write_image(tmp_path / "a.png", W, H)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(tasks))
    with pytest.raises(DatasetError, match=expected) as info:
        convert_labelstudio(path, None, tmp_path / "data")
    assert "broken.json" in str(info.value)


def test_truncated_json_is_one_message(tmp_path: Path) -> None:
    path = tmp_path / "cut.json"
    path.write_text('[{"id": 1, "annotations": [')
    with pytest.raises(DatasetError, match=r"cut\.json is not valid JSON.*truncated"):
        convert_labelstudio(path, None, tmp_path / "data")


def test_real_polygon_export_without_images(tmp_path: Path) -> None:
    root = shared_data("label_studio/gusalbukrk-fire-polygons-magicwand")
    result = convert_labelstudio(
        root / "polygon-json-to-png-masks" / "exported.json", None, tmp_path
    )
    assert (result.images, result.annotations, result.missing) == (32, 441, 32)
    dataset = CocoDataset.from_split_dir(tmp_path / "train")
    assert dataset.images[0].file_name == "video19-frame0-06-58.00.jpg"  # upload prefix gone
    assert {(i.width, i.height) for i in dataset.images} == {(1280, 720), (3840, 2160)}
    assert {c.name for c in dataset.categories} == {"Fire"}


def test_real_json_min_brushes_match_label_studio_numpy_export(tmp_path: Path) -> None:
    root = shared_data("label_studio/gusalbukrk-fire-polygons-magicwand")
    folder = root / "magicwand-coco-brush-to-png-masks"
    tasks = json.loads((folder / "exported.json").read_text())
    for k, region in enumerate(tasks[0]["labels"]):
        alpha = decode_brush_rle(region["rle"], "test").reshape(720, 1280, 4)[:, :, 3]
        expected = np.load(folder / "input" / f"task-91-annotation-57-by-1-labels-Fire-{k}.npy")
        np.testing.assert_array_equal(alpha, expected)
    result = convert_labelstudio(folder / "exported.json", None, tmp_path)
    assert (result.images, result.annotations) == (2, 5)  # 5 regions, each listed twice
    dataset = CocoDataset.from_split_dir(tmp_path / "train")
    areas = [[i.area for i in dataset.instances(k, with_masks=False)] for k in range(2)]
    assert areas == [[133, 11], [3826, 20783, 4728]]  # alpha >= 128 (> 0 gives 189, 24, ...)
