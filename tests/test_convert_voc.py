"""Pascal VOC segmentation: palette indices, the 255 band, class-only masks, nested folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam3_lora.data.coco import CocoDataset
from sam3_lora.data.convert.voc import convert_voc, voc_colour_map
from sam3_lora.errors import DatasetError
from tests.data_factory import shared_data, write_image

W, H = 50, 40


def _palette_png(values: np.ndarray, path: Path) -> None:
    image = Image.fromarray(values.astype(np.uint8), mode="P")
    image.putpalette([c for rgb in voc_colour_map() for c in rgb])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """Object ids and class values: a dog (12) and a dining table (11) cut in two by it."""
    objects = np.zeros((H, W), dtype=np.uint8)
    objects[5:35, 5:45] = 2  # the table
    objects[:, 20:30] = 1  # the dog, in front, splits the table in two
    classes = np.select([objects == 1, objects == 2], [12, 11], 0).astype(np.uint8)
    for array in (objects, classes):
        array[:, [19, 30]] = 255  # the void band along the dog's outline
    return objects, classes


def _voc(root: Path, with_objects: bool = True) -> Path:
    voc = root / "VOCdevkit" / "VOC2012"
    objects, classes = _scene()
    for stem in ("2007_000001", "2007_000002"):
        write_image(voc / "JPEGImages" / f"{stem}.jpg", W, H)
        _palette_png(classes, voc / "SegmentationClass" / f"{stem}.png")
        if with_objects:
            _palette_png(objects, voc / "SegmentationObject" / f"{stem}.png")
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("2007_000001\n")
    (sets / "val.txt").write_text("2007_000002\n")
    return voc


def _by_class(folder: Path) -> tuple[CocoDataset, dict[str, list]]:
    dataset = CocoDataset.from_split_dir(folder)
    found: dict[str, list] = {}
    for instance in dataset.instances(0):
        found.setdefault(dataset.category(instance.category_id).name, []).append(instance)
    return dataset, found


def test_object_masks_round_trip_from_a_nested_folder(tmp_path: Path) -> None:
    _voc(tmp_path / "in")
    result = convert_voc(tmp_path / "in", tmp_path / "data", "train")
    assert (result.images, result.annotations) == (1, 2)  # train.txt lists one image
    dataset, found = _by_class(tmp_path / "data" / "train")
    objects, _ = _scene()
    np.testing.assert_array_equal(found["dog"][0].mask, objects == 1)
    (table,) = found["diningtable"]  # one instance in two parts
    np.testing.assert_array_equal(table.mask, objects == 2)
    assert dataset.category(table.category_id).prompt == "dining table"
    assert len(dataset.categories) == 20  # every VOC class, background left out
    (valid,) = [convert_voc(tmp_path / "in", tmp_path / "data", "valid")]
    assert valid.images == 1


def test_class_masks_only_give_connected_parts(tmp_path: Path) -> None:
    _voc(tmp_path / "in", with_objects=False)
    convert_voc(tmp_path / "in", tmp_path / "data", image_set="all", classes=None)
    _, found = _by_class(tmp_path / "data" / "train")
    assert len(found["dog"]) == 1 and len(found["diningtable"]) == 2


def test_rgb_resaved_masks_and_custom_classes(tmp_path: Path) -> None:
    voc = _voc(tmp_path / "in")
    colours = np.asarray(voc_colour_map(), dtype=np.uint8)
    for folder in ("SegmentationClass", "SegmentationObject"):
        path = voc / folder / "2007_000001.png"
        Image.fromarray(colours[np.asarray(Image.open(path))]).save(path)  # RGB now
    names = ["bg"] + [f"c{k}" for k in range(1, 11)] + ["table", "hound"]
    convert_voc(voc, tmp_path / "data", classes=names)
    _, found = _by_class(tmp_path / "data" / "train")
    assert sorted(found) == ["hound", "table"]


def test_broken_inputs(tmp_path: Path) -> None:
    _voc(tmp_path / "two" / "a")
    _voc(tmp_path / "two" / "b")
    with pytest.raises(DatasetError, match=r"holds several VOC folders"):
        convert_voc(tmp_path / "two", tmp_path / "data")
    with pytest.raises(DatasetError, match=r"no SegmentationObject/ or SegmentationClass/"):
        convert_voc(tmp_path / "two" / "a" / "VOCdevkit" / "VOC2012" / "JPEGImages", tmp_path / "x")
    voc = _voc(tmp_path / "objects_only")
    for path in (voc / "SegmentationClass").iterdir():
        path.unlink()
    with pytest.raises(DatasetError, match=r"2007_000001\.png: object 1 has no class mask"):
        convert_voc(voc, tmp_path / "y")
    with pytest.raises(DatasetError, match=r"image set .*nope\.txt does not exist"):
        convert_voc(voc, tmp_path / "z", image_set="nope")


def test_real_icevision_samples(tmp_path: Path) -> None:
    root = shared_data("voc_seg/icevision-voc-samples")
    result = convert_voc(root, tmp_path / "a")
    assert (result.images, result.annotations, result.skipped) == (1, 2, 1)
    _, found = _by_class(tmp_path / "a" / "train")
    assert found["dog"][0].area == 27632 and found["chair"][0].area == 78930  # 255 band excluded
    from scipy import ndimage

    assert ndimage.label(found["chair"][0].mask, np.ones((3, 3)))[1] == 2  # cut by the dog
    result = convert_voc(root, tmp_path / "b", boxes=True)
    assert (result.images, result.box_only) == (2, 1)
    dataset = CocoDataset.from_split_dir(tmp_path / "b" / "train")
    (person,) = dataset.instances(dataset.index_of_image(2))
    np.testing.assert_allclose(person.box_xyxy, [129, 44.7, 375, 470], atol=0.01)  # 1-based, float


def test_real_labelme_voc_export_uses_its_class_names(tmp_path: Path) -> None:
    root = shared_data("mask_png/labelme-voc-export")
    result = convert_voc(root, tmp_path, min_area=1)
    assert result.annotations == 12  # the same objects as labelme2coco
