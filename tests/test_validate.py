"""Validation: each kind of problem is reported with its record; --fix writes a clean copy."""

from __future__ import annotations

import json
from pathlib import Path

from sam3_lora.data.coco import CocoDataset
from sam3_lora.data.validate import fix_dataset, validate_dataset, validate_split
from tests.data_factory import coco_dict, polygon_mask, shared_data, write_coco, write_image


def _broken_dataset(root: Path) -> Path:
    data = coco_dict()
    data["images"].append({"id": 8, "file_name": "missing.png", "width": 32, "height": 24})
    data["images"].append({"id": 9, "file_name": "wrong_size.png", "width": 10, "height": 10})
    data["images"].append({"id": 10, "file_name": "empty.png", "width": 32, "height": 24})
    data["categories"].append({"id": 3, "name": "unused"})
    data["annotations"] += [
        {"id": 20, "image_id": 0, "category_id": 1, "bbox": [1, 1, 0, 5], "segmentation": []},
        {"id": 21, "image_id": 0, "category_id": 1, "bbox": [40, 30, 4, 4]},
        {
            "id": 22,
            "image_id": 0,
            "category_id": 1,
            "bbox": [0, 0, 2, 2],
            "segmentation": [[20, 10, 30, 10, 30, 20, 20, 20]],
        },
        {"id": 23, "image_id": 0, "category_id": 9, "bbox": [1, 1, 2, 2]},
        {"id": 24, "image_id": 99, "category_id": 1, "bbox": [1, 1, 2, 2]},
        {
            "id": 10,
            "image_id": 7,
            "category_id": 2,
            "bbox": [1, 1, 5, 5],
            "segmentation": [[1, 1, 5, 5], [1, 1, 6, 1, 6, 6, 1, 6]],
        },
    ]
    split = root / "train"
    write_coco(split, data, images=False)
    for name in ("a.png", "b.png", "empty.png"):
        write_image(split / name, 32, 24)
    write_image(split / "wrong_size.png", 12, 10)
    return root


def test_every_problem_is_reported(tmp_path: Path) -> None:
    (report,) = validate_dataset(_broken_dataset(tmp_path))
    found = {(issue.code, issue.record.split(" (")[0]) for issue in report.issues}
    expected = {
        ("missing_image", "image id 8 'missing.png'"),
        ("size_mismatch", "image id 9 'wrong_size.png'"),
        ("zero_area_box", "annotation id 20"),
        ("box_outside_image", "annotation id 21"),
        ("box_mask_mismatch", "annotation id 22"),
        ("unknown_category", "annotation id 23"),
        ("unknown_image", "annotation id 24"),
        ("duplicate_id", "annotation id 10"),
        ("bad_polygon", "annotation id 10"),
        ("unused_category", "category id 3"),
        ("no_annotations", "image id 10 'empty.png'"),
    }
    assert expected <= found, expected - found
    warnings = {issue.code for issue in report.warnings}
    assert {"unused_category", "no_annotations"} <= warnings
    assert "no_annotations" not in {issue.code for issue in report.errors}


def test_fix_writes_a_loadable_copy_and_leaves_input(tmp_path: Path) -> None:
    source = _broken_dataset(tmp_path / "in")
    before = (source / "train" / "_annotations.coco.json").read_bytes()
    fix_dataset(source, tmp_path / "out")
    assert (source / "train" / "_annotations.coco.json").read_bytes() == before
    (report,) = validate_dataset(tmp_path / "out")
    assert not report.errors, report.errors
    fixed = CocoDataset.from_split_dir(tmp_path / "out" / "train")
    assert {image.file_name for image in fixed.images} == {"a.png", "b.png", "empty.png"}
    ids = [a["id"] for i in range(len(fixed)) for a in fixed.raw_annotations(i)]
    assert len(ids) == len(set(ids))
    boxes = [inst.box_xyxy.tolist() for i in range(len(fixed)) for inst in fixed.instances(i)]
    assert [20, 10, 30, 20] in boxes  # box repaired from its mask


def test_clean_dataset_has_no_errors(tmp_path: Path) -> None:
    write_coco(tmp_path / "train")
    (report,) = validate_dataset(tmp_path)
    assert not report.errors


def test_truncated_image_is_unreadable(tmp_path: Path) -> None:
    path = write_coco(tmp_path)
    whole = tmp_path / "a.png"
    whole.write_bytes(whole.read_bytes()[:60])
    report = validate_split(path)
    assert any(i.code == "unreadable_image" and "image id 0" in i.record for i in report.errors)


def test_real_files_are_checked() -> None:
    report = validate_split(
        shared_data("coco_polygon/roboflow-plantvein/valid") / "_annotations.coco.json"
    )
    assert not report.errors
    assert any(i.code == "duplicate_name" for i in report.warnings)  # "vein" twice
    assert any(i.code == "unused_category" and i.record == "category id 0" for i in report.issues)
    cvat = shared_data("coco_rle/cvat-mask-export-logseg") / "annotations" / "instances_extra.json"
    report = validate_split(cvat)
    assert sum(i.code == "missing_image" for i in report.errors) == 40
    results = shared_data("coco_rle/cocoapi-segm-results")
    report = validate_split(results / "instances_val2014_fakesegm100_results.json")
    assert report.errors[0].code == "not_coco"


def test_results_json_written_by_fix_keeps_prompts(tmp_path: Path) -> None:
    write_coco(tmp_path / "in" / "train")
    fix_dataset(tmp_path / "in", tmp_path / "out")
    data = json.loads((tmp_path / "out" / "train" / "_annotations.coco.json").read_text())
    assert data["categories"][0]["prompt"] == "a cat"


def _polygon_split(root: Path, area_of: str) -> Path:
    """Two thin polygons whose 'area' is the box's (as Roboflow / CVAT write it) or the pixels."""
    ribbon = [2, 2, 30, 2, 2, 8]  # a thin triangle
    diagonal = [2, 10, 6, 10, 28, 22, 24, 22]
    data = coco_dict(annotations=[])
    for number, polygon in enumerate((ribbon, diagonal), start=1):
        xs, ys = polygon[0::2], polygon[1::2]
        box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        pixels = float(polygon_mask(polygon, 32, 24).sum())
        area = box[2] * box[3] if area_of == "box" else pixels * 1.03  # 3 %: within tolerance
        data["annotations"].append(
            {"id": number, "image_id": 0, "category_id": 1, "bbox": box, "area": area,
             "segmentation": [polygon], "iscrowd": 0}
        )  # fmt: skip
    return write_coco(root / "train", data)


def test_box_areas_are_flagged_and_fixed(tmp_path: Path) -> None:
    path = _polygon_split(tmp_path / "in", "box")
    report = validate_split(path)
    flagged = [i for i in report.warnings if i.code == "area_mismatch"]
    assert len(flagged) == 2 and not report.errors
    assert "it is the box's area (w x h)" in flagged[1].message
    assert flagged[1].message.startswith("area 312 but its segmentation covers 48 px (+550%)")
    fix_dataset(tmp_path / "in", tmp_path / "out")
    fixed = json.loads((tmp_path / "out" / "train" / "_annotations.coco.json").read_text())
    polygons = [a["segmentation"][0] for a in fixed["annotations"]]
    assert [a["area"] for a in fixed["annotations"]] == [
        float(polygon_mask(p, 32, 24).sum()) for p in polygons
    ]
    (again,) = validate_dataset(tmp_path / "out")
    assert not [i for i in again.issues if i.code == "area_mismatch"]


def test_areas_within_a_few_percent_are_left_alone(tmp_path: Path) -> None:
    report = validate_split(_polygon_split(tmp_path, "pixels"))
    assert not [i for i in report.issues if i.code == "area_mismatch"]


def test_crowd_objects_need_rle(tmp_path: Path) -> None:
    data = coco_dict()
    data["annotations"][0]["iscrowd"] = 1  # a polygon crowd region
    data["annotations"][3]["iscrowd"] = 1  # a box-only crowd region
    data["annotations"][1]["iscrowd"] = 2
    data["annotations"][1]["area"] = "big"
    data["annotations"][3]["area"] = float("nan")  # box only
    write_coco(tmp_path / "in" / "train", data)
    (report,) = validate_dataset(tmp_path / "in")
    found = {(i.code, i.record.split(" (")[0]) for i in report.errors}
    assert {
        ("crowd_not_rle", "annotation id 10"),
        ("crowd_not_rle", "annotation id 13"),
        ("bad_iscrowd", "annotation id 11"),
        ("bad_area", "annotation id 11"),
        ("bad_area", "annotation id 13"),
    } <= found
    crowd_only = [i.record for i in report.warnings if i.code == "all_crowd"]
    assert crowd_only == ["category id 1"]  # both 'cat' objects are crowd regions now
    fix_dataset(tmp_path / "in", tmp_path / "out")
    (again,) = validate_dataset(tmp_path / "out")
    assert not again.errors, again.errors
    fixed = CocoDataset.from_split_dir(tmp_path / "out" / "train")
    crowd = [i for k in range(len(fixed)) for i in fixed.instances(k) if i.iscrowd]
    assert len(crowd) == 3 and all(i.mask is not None for i in crowd)
    box_region = next(i for i in crowd if i.mask.sum() == 50)  # the 10 x 5 box
    assert box_region.mask[5:10, 10:20].all()


def test_a_category_of_crowd_regions_only_is_flagged(tmp_path: Path) -> None:
    data = coco_dict()
    for annotation in data["annotations"]:
        if annotation["category_id"] == 1:
            annotation["iscrowd"] = 1
            annotation["segmentation"] = {"size": [24, 32], "counts": [0, 48, 720]}
    report = validate_split(write_coco(tmp_path, data))
    (issue,) = [i for i in report.warnings if i.code == "all_crowd"]
    assert issue.record == "category id 1" and "set iscrowd to 0" in issue.message


def test_names_a_model_cannot_ground(tmp_path: Path) -> None:
    names = ["0", "class_3", "defect_type_2", "Hard hat", "hard_hat", "_background_", "car"]
    categories = [{"id": k, "name": n} for k, n in enumerate(names, start=1)]
    categories.append({"id": 9, "name": "4", "prompt": "four-leaf clover"})  # a prompt fixes it
    data = coco_dict(categories=categories)
    report = validate_split(write_coco(tmp_path, data))
    single = {i.record: i.message for i in report.warnings if i.code == "ungroundable_name"}
    assert sorted(single) == [f"category id {k}" for k in (1, 2, 3, 6)]
    assert "'0' is a number or code, not words" in single["category id 1"]
    assert "set a 'prompt'" in single["category id 2"]
    (similar,) = [i for i in report.warnings if i.code == "similar_names"]
    assert similar.record == "category ids 4, 5" and "case or spacing" in similar.message


def test_real_roboflow_box_areas_are_fixed(tmp_path: Path) -> None:
    root = shared_data("coco_polygon/roboflow-plantvein")
    report = validate_split(root / "valid" / "_annotations.coco.json")
    flagged = [i for i in report.warnings if i.code == "area_mismatch"]
    assert len(flagged) == 19 and all("box's area" in i.message for i in flagged)
    assert "area 9198 but its segmentation covers 1254 px" in flagged[0].message  # valid ann 0
    fix_dataset(root, tmp_path / "fixed")
    for split in ("train", "valid", "test"):
        (again,) = validate_dataset(tmp_path / "fixed", split)
        assert not [i for i in again.issues if i.code == "area_mismatch"]


def test_real_official_areas_are_not_flagged() -> None:
    tiny = shared_data("coco_polygon/tiny-coco-2017")
    report = validate_split(
        tiny / "annotations" / "instances_val2017.json", tiny / "images" / "val2017"
    )
    assert not report.errors and not [i for i in report.issues if i.code == "area_mismatch"]
    labelme = shared_data("coco_polygon/labelme2coco-voc2011") / "annotations.json"
    report = validate_split(labelme)
    assert not [i for i in report.issues if i.code == "area_mismatch"]  # 3-7 % off, small objects
    assert [i.record for i in report.issues if i.code == "ungroundable_name"] == ["category id 0"]


def test_real_cvat_masks_all_crowd_are_flagged() -> None:
    cvat = shared_data("coco_rle/cvat-mask-export-logseg") / "annotations" / "instances_extra.json"
    report = validate_split(cvat, decode_images=False)
    (issue,) = [i for i in report.warnings if i.code == "all_crowd"]
    assert "all 75 instances of 'cut' are iscrowd=1" in issue.message
