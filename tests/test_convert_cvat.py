"""CVAT for images 1.1 XML: shapes, box-local mask RLE, project subsets, missing images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sam3_lora.data.coco import CocoDataset
from sam3_lora.data.convert.cvat import convert_cvat
from sam3_lora.errors import DatasetError
from tests.data_factory import (
    assert_box_within_a_pixel,
    assert_mask_within_a_pixel,
    polygon_mask,
    shared_data,
    write_image,
)

W, H = 60, 40


def _cvat_rle(box_mask: np.ndarray) -> str:
    """CVAT's RLE: run lengths inside the box, row by row, background first."""
    flat = box_mask.ravel().astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ", ".join(str(v) for v in ([0] if flat[0] else []) + runs)


def _mask_shape() -> tuple[np.ndarray, str]:
    box = np.zeros((6, 8), dtype=bool)
    box[1:5, 2:7] = True
    box[0, 0] = True
    full = np.zeros((H, W), dtype=bool)
    full[20:26, 30:38] = box
    return full, _cvat_rle(box)


def _xml(
    images: str, meta: str = "<task><labels><label><name>cat</name></label></labels></task>"
) -> str:
    head = '<?xml version="1.0"?>\n<annotations><version>1.1</version>'
    return f"{head}<meta>{meta}</meta>{images}</annotations>"


def _image(image_id: int, shapes: str, width: int = W, height: int = H) -> str:
    return f'<image id="{image_id}" name="a.png" width="{width}" height="{height}">{shapes}</image>'


def _task_export(tmp_path: Path) -> Path:
    _, rle = _mask_shape()
    images = f"""
  <image id="0" name="sub/a.jpg" width="{W}" height="{H}">
    <polygon label="cat" source="manual" occluded="1" points="5.0,5.0;25.0,5.0;25.0,20.0">
      <attribute name="colour">black</attribute>
    </polygon>
    <box label="dog" occluded="0" xtl="30" ytl="2" xbr="50" ybr="12" z_order="0"></box>
    <box label="dog" occluded="0" xtl="30" ytl="2" xbr="50" ybr="12" rotation="90"></box>
    <ellipse label="ball" occluded="0" cx="10" cy="30" rx="5" ry="3" z_order="0"></ellipse>
    <mask label="cat" source="manual" occluded="0" rle="{rle}" left="30" top="20" width="8"
      height="6" z_order="0"></mask>
    <polyline label="cat" occluded="0" points="1,1;2,2"></polyline>
    <tag label="cat"></tag>
  </image>
  <image id="5" name="missing.jpg" width="{W}" height="{H}">
    <polygon label="cat" occluded="0" points="1,1;9,1;9,9"></polygon>
  </image>"""
    write_image(tmp_path / "images" / "sub" / "a.jpg", W, H)
    path = tmp_path / "annotations.xml"
    path.write_text(_xml(images))
    return path


def test_task_export_round_trip(tmp_path: Path) -> None:
    (result,) = convert_cvat(_task_export(tmp_path), None, tmp_path / "data")
    assert (result.images, result.missing, result.annotations, result.skipped) == (2, 1, 6, 2)
    dataset = CocoDataset.from_split_dir(tmp_path / "data" / "train")
    names = [c.name for c in dataset.categories]
    assert names[0] == "cat"  # declared labels first, then the ones met in shapes
    found: dict[str, list] = {}
    for instance in dataset.instances(0):
        found.setdefault(dataset.category(instance.category_id).name, []).append(instance)
    polygon, mask = found["cat"]
    assert_mask_within_a_pixel(polygon.mask, polygon_mask([5, 5, 25, 5, 25, 20], W, H))
    np.testing.assert_array_equal(mask.mask, _mask_shape()[0])
    box, rotated = found["dog"]
    assert box.mask is None
    assert_box_within_a_pixel(box.box_xyxy, [30, 2, 50, 12])
    assert_box_within_a_pixel(rotated.box_xyxy, [35, 0, 45, 17])  # about its centre, clipped
    assert_box_within_a_pixel(found["ball"][0].box_xyxy, [5, 27, 15, 33])
    raw = dataset.raw_annotations(0)[0]
    assert raw["attributes"] == {"colour": "black", "occluded": True}


def test_project_export_subsets(tmp_path: Path) -> None:
    images = "".join(
        f'<image id="{i}" name="{n}.png" subset="{s}" task_id="1" width="{W}" height="{H}">'
        '<box label="cat" xtl="1" ytl="1" xbr="9" ybr="9"></box></image>'
        for i, (n, s) in enumerate([("a", "Train"), ("b", "Validation"), ("c", "Train")])
    )
    for name in "abc":
        write_image(tmp_path / "images" / f"{name}.png", W, H)
    path = tmp_path / "project.xml"
    path.write_text(
        _xml(images, "<project><labels><label><name>cat</name></label></labels></project>")
    )
    results = convert_cvat(path, None, tmp_path / "data")
    assert {r.split: r.images for r in results} == {"train": 2, "valid": 1}
    with pytest.raises(DatasetError, match=r"subsets \['Train', 'Validation'\]; pass --subset"):
        convert_cvat(path, None, tmp_path / "x", "train")
    (only,) = convert_cvat(path, None, tmp_path / "y", "test", subset="Validation")
    assert (only.split, only.images) == ("test", 1)


def test_names_cannot_reach_outside_the_images_folder(tmp_path: Path) -> None:
    write_image(tmp_path / "secret.png", W, H)
    (tmp_path / "images").mkdir()
    path = tmp_path / "images" / "annotations.xml"
    path.write_text(_xml(f'<image id="0" name="../secret.png" width="{W}" height="{H}"></image>'))
    (result,) = convert_cvat(path, tmp_path / "images", tmp_path / "data")
    assert result.missing == 1  # looked up by name inside images/, never ../


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("<annotations><image", r"bad\.xml is not valid XML \(.*line 1"),
        ("<root/>", r"root element <root>, expected <annotations>"),
        (
            _xml(_image(3, '<polygon label="cat" points="1,1;5,5"/>')),
            r"image id 3 'a\.png', <polygon> #0: polygon with 2 points",
        ),
        (
            _xml(
                f'<image id="4" name="a.png" width="{W}" height="{H}"><mask label="cat" rle="1, 2" '
                'left="0" top="0" width="4" height="4"/></image>'
            ),
            r"image id 4 'a\.png', <mask> #0: mask RLE covers 3 pixels but its box is 4x4",
        ),
        (
            _xml(_image(6, '<box label="cat" xtl="x" ytl="1" xbr="2" ybr="3"/>')),
            r"<box> #0: 'xtl' = 'x' is not a number",
        ),
        (_xml("<track id='0' label='cat'></track>"), r"'CVAT for video' export"),
        (
            _xml('<image id="7" name="a.png" width="10" height="10"></image>'),
            r"image id 7 'a\.png': image .* is 60x40 but its annotations say 10x10",
        ),
    ],
)
def test_broken_exports_name_file_image_and_shape(tmp_path: Path, body: str, expected: str) -> None:
    write_image(tmp_path / "a.png", W, H)
    path = tmp_path / "bad.xml"
    path.write_text(body)
    with pytest.raises(DatasetError, match=expected) as info:
        convert_cvat(path, tmp_path, tmp_path / "data")
    assert "bad.xml" in str(info.value)


def test_real_coins_job_export(tmp_path: Path) -> None:
    root = shared_data("cvat_xml/coins-counter-polygons")
    (result,) = convert_cvat(root / "annotations.xml", None, tmp_path)
    assert (result.images, result.annotations, result.missing) == (29, 122, 18)
    dataset = CocoDataset.from_split_dir(tmp_path / "train")
    assert len(dataset.categories) == 11  # 'digit' is declared but never used
    present = [i for i in dataset.images if i.path.is_file()]
    assert len(present) == 11
    assert sum(len(dataset.raw_annotations(dataset.index_of_image(i.id))) for i in present) == 66
    mpo = next(i for i in dataset.images if i.file_name == "dsc08747.jpg")
    assert (mpo.width, mpo.height) == (2180, 1104)
