"""The broken-input corpus in tests/data/bad/: each file gives a message naming file and record."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sam3_lora.data.coco import CocoDataset
from sam3_lora.data.convert.cvat import convert_cvat
from sam3_lora.data.convert.labelme import convert_labelme
from sam3_lora.data.convert.labelstudio import convert_labelstudio
from sam3_lora.data.convert.masks import convert_rle_csv
from sam3_lora.data.convert.per_image_json import convert_per_image_json
from sam3_lora.data.convert.voc import convert_voc
from sam3_lora.data.convert.yolo import convert_yolo
from sam3_lora.data.images import load_image_rgb
from sam3_lora.data.validate import validate_split
from sam3_lora.errors import DatasetError
from tests.data_factory import BAD_DATA, write_image

COCO_CASES = [
    ("truncated.json", r"not valid JSON: .* line \d+, column \d+; the file looks truncated"),
    ("two_point_polygon.json", r"annotation id 5: polygon 0 has 4 coordinates"),
    ("nan_coordinates.json", r"annotation id 6: 'bbox' .*NaN"),
    ("negative_size.json", r"image id 3 \(img\.png\) has size -8x8"),
    ("wrong_category.json", r"annotation id 9 has category id 42"),
    ("unknown_image.json", r"annotation id 11 refers to image id 77"),
    ("huge_ids.json", r"annotation #0: 'id' 1000000000000000000000000000000 does not fit"),
    ("duplicate_ids.json", r"annotation id 4 appears twice"),
    ("path_escape.json", r"image id 2: .*'\.\./\.\./etc/passwd'.*'\.\.'"),
    ("results_list.json", r"holds COCO results \(predictions with scores\)"),
    ("non_utf8.json", r"is not UTF-8: byte 0xe9 at line 1"),
    ("empty.json", r"is empty"),
]


@pytest.mark.parametrize(("name", "expected"), COCO_CASES)
def test_coco_corpus_messages(name: str, expected: str) -> None:
    with pytest.raises(DatasetError, match=expected) as info:
        CocoDataset(BAD_DATA / name)
    assert name in str(info.value)


@pytest.mark.parametrize(("name", "_"), COCO_CASES)
def test_validate_reports_corpus_without_traceback(name: str, _: str) -> None:
    report = validate_split(BAD_DATA / name, decode_images=False)
    assert report.errors, f"{name}: no error reported"


@pytest.mark.parametrize(
    ("name", "expected"),
    [("truncated.jpg", r"truncated\.jpg.*truncated"), ("not_an_image.png", r"not_an_image\.png")],
)
def test_image_corpus_messages(name: str, expected: str) -> None:
    with pytest.raises(DatasetError, match=expected):
        load_image_rgb(BAD_DATA / name)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("yolo_two_point.txt", r"img\.txt, line 2: 3 coordinates"),
        ("yolo_pixels.txt", r"img\.txt, line 1: coordinates must be normalised .*pixels"),
        ("yolo_nan.txt", r"img\.txt, line 1: NaN"),
    ],
)
def test_yolo_corpus_messages(tmp_path: Path, name: str, expected: str) -> None:
    write_image(tmp_path / "in" / "images" / "img.png", 8, 8)
    (tmp_path / "in" / "labels").mkdir()
    shutil.copy(BAD_DATA / name, tmp_path / "in" / "labels" / "img.txt")
    with pytest.raises(DatasetError, match=expected):
        convert_yolo(tmp_path / "in", tmp_path / "out", "train", classes="thing")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("labelme_two_point.json", r"labelme_two_point\.json: shape #0: polygon with 2 points"),
        ("labelme_escape.json", r"labelme_escape\.json: imagePath .*dataset folder"),
    ],
)
def test_labelme_corpus_messages(tmp_path: Path, name: str, expected: str) -> None:
    write_image(tmp_path / "in" / "img.png", 8, 8)
    shutil.copy(BAD_DATA / name, tmp_path / "in" / name)
    with pytest.raises(DatasetError, match=expected):
        convert_labelme(tmp_path / "in", tmp_path / "out")


def test_per_image_json_corpus_message(tmp_path: Path) -> None:
    write_image(tmp_path / "in" / "per_image_swapped_box.png", 8, 8)
    shutil.copy(BAD_DATA / "per_image_swapped_box.json", tmp_path / "in")
    with pytest.raises(
        DatasetError, match=r"per_image_swapped_box\.json: object 0: bbox .*x2 <= x1"
    ):
        convert_per_image_json(tmp_path / "in", tmp_path / "out")


def test_severstal_corpus_message(tmp_path: Path) -> None:
    write_image(tmp_path / "img.jpg", 8, 8)
    with pytest.raises(DatasetError, match=r"severstal_overlap\.csv, line 2 \(img\.jpg, class 1\)"):
        convert_rle_csv(BAD_DATA / "severstal_overlap.csv", tmp_path, tmp_path / "out")


def test_labelstudio_corpus_message(tmp_path: Path) -> None:
    write_image(tmp_path / "img.png", 8, 8)
    with pytest.raises(
        DatasetError, match=r"labelstudio_two_point\.json: task 12, region Xy12ab: polygon with 2"
    ):
        convert_labelstudio(BAD_DATA / "labelstudio_two_point.json", tmp_path, tmp_path / "out")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "cvat_two_point.xml",
            r"cvat_two_point\.xml: image id 3 'img\.png', <polygon> #0: polygon",
        ),
        ("cvat_truncated.xml", r"cvat_truncated\.xml is not valid XML \(.*line 5"),
    ],
)
def test_cvat_corpus_messages(tmp_path: Path, name: str, expected: str) -> None:
    write_image(tmp_path / "img.png", 8, 8)
    with pytest.raises(DatasetError, match=expected):
        convert_cvat(BAD_DATA / name, tmp_path, tmp_path / "out")


def test_voc_corpus_message(tmp_path: Path) -> None:
    (tmp_path / "voc" / "Annotations").mkdir(parents=True)
    (tmp_path / "voc" / "SegmentationClass").mkdir()
    write_image(tmp_path / "voc" / "JPEGImages" / "img.jpg", 8, 8)
    shutil.copy(BAD_DATA / "voc_bad_box.xml", tmp_path / "voc" / "Annotations" / "img.xml")
    with pytest.raises(
        DatasetError, match=r"img\.xml: <object> #1 \(dog\): <bndbox> needs numbers"
    ):
        convert_voc(tmp_path / "voc", tmp_path / "out", boxes=True)
