"""``data validate --config``: every split of a training config, with its prompts and counts."""

from __future__ import annotations

import json
from pathlib import Path

from sam3_lora.config import load_config
from sam3_lora.data.config_check import validate_config
from sam3_lora.data.sources import open_split, resolve_data_splits, split_sources
from tests.data_factory import coco_dict, write_coco


def _config(tmp_path: Path, data: str) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(f"model:\n  name_or_path: tiny\ndata:\n{data}")
    return path


def test_every_split_is_checked_with_its_prompts(tmp_path: Path) -> None:
    write_coco(tmp_path / "data" / "train")
    broken = coco_dict()
    broken["annotations"][0]["category_id"] = 42
    write_coco(tmp_path / "data" / "valid", broken)
    write_coco(tmp_path / "files", coco_dict())
    config = load_config(
        _config(
            tmp_path,
            f"  train: {tmp_path / 'data' / 'train'}\n"
            f"  valid: {tmp_path / 'data' / 'valid'}\n"
            f"  test:\n    annotation_file: {tmp_path / 'files' / '_annotations.coco.json'}\n"
            f"    images_dir: {tmp_path / 'files'}\n",
        )
    )
    train, valid, test = validate_config(config)
    assert [r.split for r in (train, valid, test)] == ["train", "valid", "test"]
    assert not train.errors and not test.errors
    assert {i.code for i in valid.errors} >= {"unknown_category", "unloadable"}
    cat, dog = train.prompts
    assert (cat.prompt, cat.synonyms, cat.instances, cat.images, cat.crowd) == (
        "a cat",
        ("kitty",),
        1,
        1,
        1,
    )
    assert (dog.prompt, dog.instances, dog.images) == ("dog", 2, 2)


def test_missing_split_folder_and_synthetic_config(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, f"  train: {tmp_path / 'nowhere'}\n"))
    (report,) = validate_config(config)
    assert report.errors[0].code == "missing_split"
    assert "data.train: split folder" in report.errors[0].message
    synthetic = load_config(
        _config(tmp_path, f"  synthetic:\n    output_dir: {tmp_path / 'shapes'}\n")
    )
    reports = validate_config(synthetic)
    assert [r.split for r in reports] == ["train", "valid"]
    assert all("generated at" in r.note and not r.issues for r in reports)


def test_sources_open_splits_as_training_does(tmp_path: Path) -> None:
    write_coco(tmp_path / "train")
    config = load_config(_config(tmp_path, f"  train: {tmp_path / 'train'}\n"))
    train, valid = resolve_data_splits(config)
    assert len(train) == 2 and valid is None
    assert open_split(None, "valid") is None
    (source,) = split_sources(config)
    assert source.annotation_file == tmp_path / "train" / "_annotations.coco.json"


def test_cli_validate_config(tmp_path: Path, capsys) -> None:
    from sam3_lora.cli import main

    data = coco_dict()
    data["categories"][1]["name"] = "class_2"
    write_coco(tmp_path / "train", data)
    path = _config(tmp_path, f"  train: {tmp_path / 'train'}\n")
    assert main(["data", "validate", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "'class_2' is a numbered placeholder" in out
    assert "a cat" in out and "kitty" in out and "\x1b[" not in out
    (tmp_path / "train" / "_annotations.coco.json").write_text(json.dumps({"images": 3}))
    assert main(["data", "validate", "--config", str(path)]) == 1
