"""Validation: each kind of problem is reported with its record; --fix writes a clean copy."""

from __future__ import annotations

import json
from pathlib import Path

from sam3_lora.data.coco import CocoDataset
from sam3_lora.data.validate import fix_dataset, validate_dataset, validate_split
from tests.data_factory import coco_dict, shared_data, write_coco, write_image


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
