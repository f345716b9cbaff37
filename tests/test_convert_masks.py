"""Mask PNGs (binary, semantic palette, instance ids, CVAT colours) and Severstal RLE CSVs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam3_lora.data.coco import CocoDataset
from sam3_lora.data.convert.masks import convert_masks, convert_rle_csv, load_class_names
from sam3_lora.errors import DatasetError
from tests.data_factory import assert_box_within_a_pixel, shared_data, write_image


def _label_image() -> np.ndarray:
    values = np.zeros((30, 40), dtype=np.uint8)
    values[2:10, 2:12] = 1  # class 1, object A
    values[15:25, 5:15] = 1  # class 1, object B (separate component)
    values[5:20, 25:35] = 2  # class 2
    values[0, 39] = 2  # a 1-pixel speck, below min_area
    values[28:30, 0:40] = 255  # ignore band
    return values


def _instances_by_class(root: Path) -> dict[str, list]:
    dataset = CocoDataset.from_split_dir(root / "train")
    found: dict[str, list] = {}
    for instance in dataset.instances(0):
        found.setdefault(dataset.category(instance.category_id).name, []).append(instance)
    return found


def test_semantic_palette_masks(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "a.jpg", 40, 30)
    palette = Image.fromarray(_label_image(), mode="P")
    palette.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [255] * 759)
    (tmp_path / "masks").mkdir()
    palette.save(tmp_path / "masks" / "a_mask.png")
    convert_masks(
        tmp_path / "images",
        tmp_path / "masks",
        tmp_path / "data",
        mask_type="semantic",
        classes=["_background_", "leaf", "bug"],
        min_area=4,
    )
    found = _instances_by_class(tmp_path / "data")
    assert sorted(found) == ["bug", "leaf"] and len(found["leaf"]) == 2 and len(found["bug"]) == 1
    expected = _label_image()
    for instance in found["leaf"]:
        assert (expected[instance.mask] == 1).all()
    np.testing.assert_array_equal(found["bug"][0].mask, _component(expected == 2, 25))
    assert_box_within_a_pixel(found["bug"][0].box_xyxy, [25, 5, 35, 20])


def _component(mask: np.ndarray, column: int) -> np.ndarray:
    out = np.zeros_like(mask)
    out[:, column:] = mask[:, column:]
    out[0, 39] = False
    return out


def test_binary_masks_with_white_background(tmp_path: Path) -> None:
    write_image(tmp_path / "image" / "0.png", 40, 30)
    mask = np.full((30, 40), 255, dtype=np.uint8)
    mask[3:8, 3:30] = 0  # black structure on white, as in the ISBI membranes
    (tmp_path / "label").mkdir()
    Image.fromarray(mask).save(tmp_path / "label" / "0.png")
    convert_masks(
        tmp_path / "image",
        tmp_path / "label",
        tmp_path / "data",
        background=255,
        ignore_value=None,
        class_name="membrane",
    )
    (instance,) = _instances_by_class(tmp_path / "data")["membrane"]
    np.testing.assert_array_equal(instance.mask, mask == 0)


def test_instance_masks_classed_by_semantic_masks(tmp_path: Path) -> None:
    write_image(tmp_path / "img" / "a.png", 40, 30)
    objects = np.zeros((30, 40), dtype=np.uint8)
    objects[2:10, 2:12] = 1
    objects[12:20, 2:12] = 7  # ids need not be contiguous
    classes = np.where(objects == 1, 3, np.where(objects == 7, 5, 0)).astype(np.uint8)
    for folder, array in (("obj", objects), ("cls", classes)):
        (tmp_path / folder).mkdir()
        Image.fromarray(array).save(tmp_path / folder / "a.png")
    names = ["bg", "x", "y", "cat", "z", "dog"]
    convert_masks(
        tmp_path / "img",
        tmp_path / "obj",
        tmp_path / "data",
        mask_type="instance",
        class_masks_dir=tmp_path / "cls",
        classes=names,
    )
    found = _instances_by_class(tmp_path / "data")
    np.testing.assert_array_equal(found["cat"][0].mask, objects == 1)
    np.testing.assert_array_equal(found["dog"][0].mask, objects == 7)


def test_mask_size_mismatch(tmp_path: Path) -> None:
    write_image(tmp_path / "img" / "a.png", 40, 30)
    (tmp_path / "m").mkdir()
    Image.new("L", (20, 20)).save(tmp_path / "m" / "a.png")
    with pytest.raises(DatasetError, match=r"mask .*a\.png is 20x20 but its image is 40x30"):
        convert_masks(tmp_path / "img", tmp_path / "m", tmp_path / "data")


def _kaggle_rle(mask: np.ndarray) -> str:
    flat = np.concatenate([[0], mask.flatten(order="F").astype(np.int8), [0]])
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    changes[1::2] -= changes[::2]
    return " ".join(str(v) for v in changes)


def test_severstal_long_csv_round_trip(tmp_path: Path) -> None:
    write_image(tmp_path / "img" / "s1.jpg", 40, 30)
    mask = np.zeros((30, 40), dtype=bool)
    mask[4:20, 3:9] = True
    mask[10:12, 30:38] = True
    csv = tmp_path / "train.csv"
    csv.write_text(f"ImageId,ClassId,EncodedPixels\ns1.jpg,3,{_kaggle_rle(mask)}\n")
    result = convert_rle_csv(csv, tmp_path / "img", tmp_path / "data", classes=["a", "b", "c"])
    assert result.annotations == 2  # two connected components
    found = _instances_by_class(tmp_path / "data")["c"]
    union = np.logical_or.reduce([inst.mask for inst in found])
    np.testing.assert_array_equal(union, mask)


def test_real_severstal_wide_csv(tmp_path: Path) -> None:
    csv = shared_data("rle_csv/severstal-train-wide-format") / "train_rows.csv"
    names = [
        "0002cc93b",
        "00031f466",
        "000418bfc",
        "000789191",
        "0007a71bf",
        "0014fce06",
        "001982b08",
    ]
    for name in names:
        Image.new("L", (1600, 256)).save(tmp_path / f"{name}.jpg")
    result = convert_rle_csv(csv, tmp_path, tmp_path / "data", split_components=False)
    assert (result.images, result.annotations) == (7, 3)
    dataset = CocoDataset.from_split_dir(tmp_path / "data" / "train")
    assert sorted(c.name for c in dataset.categories) == ["defect_1", "defect_3"]


def test_real_severstal_pseudo_labels_needs_images(tmp_path: Path) -> None:
    csv = shared_data("rle_csv/severstal-pseudo-labels-khornlund") / "pseudo_head.csv"
    with pytest.raises(DatasetError, match=r"pseudo_head\.csv: image 004f40c73\.jpg \(line 2\)"):
        convert_rle_csv(csv, tmp_path, tmp_path / "data")


def test_real_voc_export_matches_instance_count(tmp_path: Path) -> None:
    root = shared_data("mask_png/labelme-voc-export")
    classes, colours = load_class_names(root / "labels.txt")
    assert classes[0] == "_background_" and colours is None
    result = convert_masks(
        root / "JPEGImages",
        root / "SegmentationObject",
        tmp_path,
        mask_type="instance",
        class_masks_dir=root / "SegmentationClass",
        classes=classes,
        min_area=1,
    )
    assert result.annotations == 12  # the same 12 objects as labelme2coco
    dataset = CocoDataset.from_split_dir(tmp_path / "train")
    used = {dataset.category(i.category_id).name for k in range(3) for i in dataset.instances(k)}
    assert used == {"bottle", "bus", "car", "chair", "person", "sofa"}


def test_real_cvat_colour_masks(tmp_path: Path) -> None:
    root = shared_data("mask_png/cvat-segmentation-mask-1.1-animals")
    classes, colours = load_class_names(root / "labelmap.txt")
    assert classes[2] == "fox" and colours[2] == (160, 96, 64)
    convert_masks(
        root / "JPEGImages",
        root / "SegmentationClass",
        tmp_path,
        mask_type="semantic",
        classes=classes,
        colours=colours,
        min_area=50,
    )
    dataset = CocoDataset.from_split_dir(tmp_path / "train")
    used = {dataset.category(i.category_id).name for k in range(2) for i in dataset.instances(k)}
    assert used == {"fox"}


def test_real_isbi_membranes(tmp_path: Path) -> None:
    root = shared_data("mask_png/unet-isbi-membrane")
    result = convert_masks(
        root / "image",
        root / "label",
        tmp_path,
        background=255,
        ignore_value=None,
        class_name="membrane",
    )
    assert result.images == 3 and result.annotations >= 3


def _known_objects(width: int = 160, height: int = 120) -> Image.Image:
    from PIL import ImageDraw

    mask = Image.new("L", (width, height))
    draw = ImageDraw.Draw(mask)
    draw.rectangle([10, 10, 59, 49], fill=255)
    draw.ellipse([80, 20, 139, 89], fill=255)
    draw.polygon([(20, 70), (60, 110), (10, 110)], fill=255)
    return mask


def _areas_match(found: list, truth: np.ndarray, tolerance: float = 0.01) -> None:
    from scipy import ndimage

    labels, count = ndimage.label(truth, structure=np.ones((3, 3)))
    assert len(found) == count
    matched = set()
    for instance in found:
        component = int(np.bincount(labels[instance.mask]).argmax())
        expected = int((labels == component).sum())
        assert abs(instance.area - expected) <= tolerance * expected, (instance.area, expected)
        matched.add(component)
    assert matched == set(range(1, count + 1))


def test_jpeg_mask_gives_exactly_the_known_objects(tmp_path: Path) -> None:
    write_image(tmp_path / "img" / "a.png", 160, 120)
    (tmp_path / "m").mkdir()
    truth = _known_objects()
    truth.save(tmp_path / "m" / "a.jpg", quality=75)
    assert len(np.unique(np.asarray(Image.open(tmp_path / "m" / "a.jpg")))) > 20  # noisy
    result = convert_masks(tmp_path / "img", tmp_path / "m", tmp_path / "data", class_name="polyp")
    _areas_match(_instances_by_class(tmp_path / "data")["polyp"], np.asarray(truth) > 0)
    assert any("a.jpg: lossy (JPEG); binarised at 128" in w for w in result.warnings)


def test_soft_edged_png_is_binarised(tmp_path: Path) -> None:
    from PIL import ImageFilter

    write_image(tmp_path / "img" / "a.png", 160, 120)
    (tmp_path / "m").mkdir()
    truth = _known_objects()
    truth.filter(ImageFilter.GaussianBlur(1.0)).save(tmp_path / "m" / "a.png")
    result = convert_masks(tmp_path / "img", tmp_path / "m", tmp_path / "data")
    _areas_match(_instances_by_class(tmp_path / "data")["object"], np.asarray(truth) > 0, 0.03)
    assert any("many values near 0 and 255" in w for w in result.warnings)


def test_jpeg_instance_mask_snaps_to_its_ids(tmp_path: Path) -> None:
    write_image(tmp_path / "img" / "a.png", 160, 120)
    (tmp_path / "m").mkdir()
    ids = np.zeros((120, 160), dtype=np.uint8)
    ids[10:60, 10:70] = 100
    ids[60:110, 80:150] = 200
    Image.fromarray(ids).save(tmp_path / "m" / "a.jpg", quality=90)
    result = convert_masks(
        tmp_path / "img", tmp_path / "m", tmp_path / "data", mask_type="instance"
    )
    found = _instances_by_class(tmp_path / "data")["object"]
    assert sorted(round(i.area / 100) for i in found) == [30, 35]  # 3000 and 3500 px, +-1 %
    assert result.annotations == 2 and "lossy (JPEG)" in result.warnings[0]


def test_colour_mask_snaps_to_label_map_and_reports_the_rest(tmp_path: Path) -> None:
    write_image(tmp_path / "img" / "a.png", 40, 30)
    rgb = np.zeros((30, 40, 3), dtype=np.uint8)
    rgb[2:12, 2:14] = (160, 96, 64)  # fox, exact
    rgb[15:25, 20:35] = (165, 90, 70)  # fox, a little off (a re-saved mask)
    rgb[0:2, 30:40] = (0, 255, 0)  # in no label map entry
    (tmp_path / "m").mkdir()
    Image.fromarray(rgb).save(tmp_path / "m" / "a.png")
    result = convert_masks(
        tmp_path / "img",
        tmp_path / "m",
        tmp_path / "data",
        mask_type="semantic",
        classes=["background", "fox"],
        colours=[(0, 0, 0), (160, 96, 64)],
        min_area=4,
    )
    assert sorted(i.area for i in _instances_by_class(tmp_path / "data")["fox"]) == [120, 150]
    (warning,) = result.warnings
    assert "a.png" in warning and "20 pixels match no label-map colour ((0, 255, 0) x20)" in warning
    assert "150 pixels snapped" in warning


def test_small_components_are_dropped_counted_and_named(tmp_path: Path) -> None:
    from sam3_lora.data.convert.mask_cleanup import default_min_area

    assert default_min_area(512, 512) == 10 and default_min_area(1920, 1080) == 41
    write_image(tmp_path / "img" / "a.png", 40, 30)
    mask = np.zeros((30, 40), dtype=np.uint8)
    mask[5:15, 5:15] = 255
    mask[20, 20] = mask[25, 30:33] = 255  # two specks
    (tmp_path / "m").mkdir()
    Image.fromarray(mask).save(tmp_path / "m" / "a.png")
    result = convert_masks(tmp_path / "img", tmp_path / "m", tmp_path / "data")
    assert (result.annotations, result.dropped) == (1, 2)
    assert "a.png: 2 components under 10 px dropped (4 px)" in result.warnings[0]


def test_plain_0_255_mask_gives_its_objects_by_default(tmp_path: Path) -> None:
    write_image(tmp_path / "img" / "a.png", 40, 30)
    mask = np.zeros((30, 40), dtype=np.uint8)
    mask[5:15, 5:15] = 255
    (tmp_path / "m").mkdir()
    Image.fromarray(mask).save(tmp_path / "m" / "a.png")
    result = convert_masks(tmp_path / "img", tmp_path / "m", tmp_path / "data")
    assert (result.annotations, result.warnings) == (1, [])
    result = convert_masks(tmp_path / "img", tmp_path / "m", tmp_path / "other", ignore_value=255)
    assert result.annotations == 0 and "equals --ignore_value 255" in result.warnings[0]


def test_unreadable_mask_is_one_clear_error(tmp_path: Path) -> None:
    write_image(tmp_path / "img" / "a.png", 40, 30)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DatasetError, match=r"mask .*a\.png cannot be read"):
        convert_masks(tmp_path / "img", tmp_path / "m", tmp_path / "data")


def test_real_isbi_default_background_is_flagged(tmp_path: Path) -> None:
    root = shared_data("mask_png/unet-isbi-membrane")
    result = convert_masks(root / "image", root / "label", tmp_path)
    assert sum("objects cover 7" in w and "--background" in w for w in result.warnings) == 3
