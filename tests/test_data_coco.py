"""CocoDataset: parsing, decoding and the messages for broken files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sam3_lora.data.coco import CocoDataset, find_annotation_file
from sam3_lora.errors import DatasetError
from tests.data_factory import coco_dict, shared_data, write_coco


def test_reads_polygons_multipart_rle_and_box_only(tmp_path: Path) -> None:
    dataset = CocoDataset(write_coco(tmp_path))
    assert len(dataset) == 2
    assert dataset.category(1).prompt == "a cat"
    assert dataset.category(1).synonyms == ("kitty",)
    assert dataset.category(2).prompt == "dog"
    first, second = dataset.instances(0)
    assert first.box_xyxy.dtype == np.float32
    np.testing.assert_allclose(first.box_xyxy, [4, 4, 12, 12])
    assert first.mask.shape == (24, 32) and first.mask.dtype == bool
    assert abs(int(first.mask.sum()) - 64) <= 16
    assert second.mask[16, 4] and second.mask[16, 24] and not second.mask[16, 14]
    crowd, box_only = dataset.instances(dataset.index_of_image(7))
    assert crowd.annotation_id == 904600516168 and crowd.iscrowd
    assert crowd.mask[:, :2].all() and not crowd.mask[:, 2:].any()
    assert box_only.mask is None
    assert dataset.instances(0, with_masks=False)[0].mask is None
    image = dataset.load_image(0)
    assert image.mode == "RGB" and image.size == (32, 24)


def test_compressed_rle_and_missing_bbox(tmp_path: Path) -> None:
    from pycocotools import mask as mask_utils

    mask = np.zeros((24, 32), dtype=np.uint8, order="F")
    mask[5:10, 3:9] = 1
    rle = mask_utils.encode(mask)
    rle["counts"] = rle["counts"].decode()
    data = coco_dict()
    data["annotations"] = [{"id": 1, "image_id": 0, "category_id": 1, "segmentation": rle}]
    dataset = CocoDataset(write_coco(tmp_path, data))
    (instance,) = dataset.instances(0)
    np.testing.assert_array_equal(instance.mask, mask.astype(bool))
    np.testing.assert_allclose(instance.box_xyxy, [3, 5, 9, 10])
    assert instance.area == 30


def test_from_split_dir_finds_files(tmp_path: Path) -> None:
    write_coco(tmp_path)
    assert len(CocoDataset.from_split_dir(tmp_path)) == 2
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.json").write_text(json.dumps(coco_dict()))
    assert find_annotation_file(other) == other / "mine.json"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match=r"_annotations\.coco\.json.*annotations\.json"):
        CocoDataset.from_split_dir(empty)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["annotations"][0].update(image_id=99), r"annotation id 10 .*image id 99"),
        (lambda d: d["annotations"][0].update(category_id=5), r"annotation id 10 .*category id 5"),
        (lambda d: d["annotations"][1].update(id=10), r"annotation id 10 appears twice"),
        (lambda d: d["images"][1].update(id=0), r"image id 0 appears twice"),
        (lambda d: d["images"][0].update(width=-3), r"image id 0 \(a\.png\) has size -3x24"),
        (
            lambda d: d["annotations"][0].update(segmentation=[[1, 1, 5, 5]]),
            r"annotation id 10: polygon 0 has 4 coordinates",
        ),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), r"annotation id 10: 'bbox'"),
        (
            lambda d: d["annotations"][0].update(bbox=[1, 2, float("nan"), 3]),
            r"annotation id 10: 'bbox'.*NaN",
        ),
        (
            lambda d: d["annotations"][2]["segmentation"].update(size=[10, 10]),
            r"annotation id 904600516168: RLE size \[10, 10\]",
        ),
        (lambda d: d["images"][0].update(file_name="../../etc/passwd"), r"image id 0.*'\.\.'"),
        (lambda d: d["images"][0].update(file_name="/etc/passwd"), r"image id 0.*absolute"),
        (lambda d: d["categories"][0].pop("name"), r"category id 1 has no name"),
        (lambda d: d.pop("images"), r"no 'images' list"),
    ],
)
def test_broken_records_are_named(tmp_path: Path, mutate, expected: str) -> None:
    data = coco_dict()
    mutate(data)
    path = write_coco(tmp_path, data, images=False)
    with pytest.raises(DatasetError, match=expected) as info:
        CocoDataset(path)
    assert "_annotations.coco.json" in str(info.value)


def test_results_file_is_recognised(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps([{"image_id": 1, "category_id": 1, "score": 0.9}]))
    with pytest.raises(DatasetError, match="results.json holds COCO results"):
        CocoDataset(path)


def test_symlink_out_of_dataset_is_rejected(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write_coco(outside)
    inside = tmp_path / "inside"
    path = write_coco(inside, images=False)
    (inside / "a.png").symlink_to(outside / "a.png")
    with pytest.raises(DatasetError, match=r"image id 0: .*outside the dataset folder"):
        CocoDataset(path)


def test_missing_image_fails_on_load_only(tmp_path: Path) -> None:
    dataset = CocoDataset(write_coco(tmp_path, images=False))
    assert len(dataset.instances(0)) == 2
    with pytest.raises(DatasetError, match=r"a\.png does not exist"):
        dataset.load_image(0)


def test_real_roboflow_and_tiny_coco() -> None:
    plant = CocoDataset.from_split_dir(shared_data("coco_polygon/roboflow-plantvein/valid"))
    assert plant.images[0].id == 0  # 0-based ids are valid
    assert sum(len(plant.instances(i)) for i in range(len(plant))) == 19
    tiny_root = shared_data("coco_polygon/tiny-coco-2017")
    tiny = CocoDataset(
        tiny_root / "annotations" / "instances_val2017.json", tiny_root / "images" / "val2017"
    )
    instances = [inst for i in range(len(tiny)) for inst in tiny.instances(i)]
    assert len(instances) == 136
    assert max(inst.annotation_id for inst in instances) == 904600516168
    assert sum(inst.iscrowd for inst in instances) == 1
    assert tiny.load_image(0).mode == "RGB"


def test_real_cvat_rle_keeps_crowd_masks() -> None:
    root = shared_data("coco_rle/cvat-mask-export-logseg")
    dataset = CocoDataset(root / "annotations" / "instances_extra.json")
    instances = [inst for i in range(len(dataset)) for inst in dataset.instances(i)]
    assert len(instances) == 75 and all(inst.iscrowd for inst in instances)
    for inst in instances[:10]:
        assert inst.mask is not None and abs(inst.mask.sum() - inst.area) <= 1
