"""COCO import: round trip through CocoDataset, RLE option, append, errors, real exports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sam3_lora.data.coco import CocoDataset
from sam3_lora.data.convert.coco import import_coco
from sam3_lora.errors import DatasetError
from tests.data_factory import coco_dict, shared_data, write_coco


def _all_instances(dataset: CocoDataset) -> dict[str, list]:
    return {image.file_name: dataset.instances(i) for i, image in enumerate(dataset.images)}


@pytest.mark.parametrize("mask_format", ["keep", "rle"])
def test_round_trip(tmp_path: Path, mask_format: str) -> None:
    source = CocoDataset(write_coco(tmp_path / "src"))
    result = import_coco(
        source.annotation_file, None, tmp_path / "data", "train", mask_format=mask_format
    )
    assert (result.images, result.annotations) == (2, 4)
    converted = CocoDataset.from_split_dir(tmp_path / "data" / "train")
    assert [c.name for c in converted.categories] == ["cat", "dog"]
    assert converted.category(1).prompt == "a cat" and converted.category(1).synonyms == ("kitty",)
    assert sorted(i.id for i in converted.images) == [1, 2]
    before, after = _all_instances(source), _all_instances(converted)
    for name, instances in before.items():
        for old, new in zip(instances, after[name], strict=True):
            np.testing.assert_allclose(new.box_xyxy, old.box_xyxy, atol=1.0)
            assert (old.mask is None) == (new.mask is None)
            if old.mask is not None:
                np.testing.assert_array_equal(new.mask, old.mask)
            assert new.iscrowd == old.iscrowd
    raw = converted.raw_annotations(0)
    assert isinstance(raw[0]["segmentation"], dict if mask_format == "rle" else list)


def test_second_import_appends(tmp_path: Path) -> None:
    path = write_coco(tmp_path / "src")
    import_coco(path, None, tmp_path / "data", "train")
    import_coco(path, None, tmp_path / "data", "train")
    dataset = CocoDataset.from_split_dir(tmp_path / "data" / "train")
    assert len(dataset) == 4 and len(dataset.categories) == 2
    assert {i.file_name for i in dataset.images} == {"a.png", "b.png", "a_1.png", "b_1.png"}


def test_missing_image_is_named(tmp_path: Path) -> None:
    path = write_coco(tmp_path / "src")
    (tmp_path / "src" / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"image id 7 \(b\.png\): .*b\.png does not exist"):
        import_coco(path, None, tmp_path / "data", "train")
    result = import_coco(path, None, tmp_path / "data", "train", skip_bad_images=True)
    assert (result.images, result.skipped) == (1, 1)


def test_resized_image_is_rejected(tmp_path: Path) -> None:
    path = write_coco(tmp_path / "src")
    data = coco_dict()
    data["images"][0]["width"] = 64
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"image id 0 \(a\.png\).*is 32x24 but its annotations"):
        import_coco(path, None, tmp_path / "data", "train")


def test_real_roboflow_plantvein(tmp_path: Path) -> None:
    root = shared_data("coco_polygon/roboflow-plantvein")
    for split in ("train", "valid", "test"):
        import_coco(root / split / "_annotations.coco.json", None, tmp_path, split)
    counts = [
        sum(len(CocoDataset.from_split_dir(tmp_path / s).raw_annotations(i)) for i in range(2))
        for s in ("train", "valid", "test")
    ]
    assert counts == [20, 19, 18]
    names = [c.name for c in CocoDataset.from_split_dir(tmp_path / "train").categories]
    assert names == ["vein", "midrib"]  # the duplicate "vein" (ids 0 and 2) is merged


def test_real_labelme2coco_with_subfolder_file_names(tmp_path: Path) -> None:
    root = shared_data("coco_polygon/labelme2coco-voc2011")
    result = import_coco(root / "annotations.json", None, tmp_path, "train", mask_format="rle")
    assert (result.images, result.annotations) == (3, 12)
    dataset = CocoDataset.from_split_dir(tmp_path / "train")
    assert sum(len(dataset.instances(i)) for i in range(3)) == 12
