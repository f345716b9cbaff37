"""The roboflow2huggingface layout (data/<split>.zip of COCO exports), built locally, no network."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from sam3_lora.data.coco import CocoDataset
from sam3_lora.data.convert.hf import convert_hf
from sam3_lora.errors import DatasetError
from tests.data_factory import coco_dict, write_coco

pytest.importorskip("huggingface_hub")


def _split_zip(path: Path, scratch: Path, images: int = 2) -> Path:
    data = coco_dict()
    data["images"] = data["images"][:images]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in (0, 7)[:images]]
    write_coco(scratch, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as bundle:
        for file in sorted(scratch.iterdir()):
            bundle.write(file, file.name)  # as shutil.make_archive(root_dir=split) writes them
    return path


def _repository(root: Path, scratch: Path) -> Path:
    _split_zip(root / "data" / "train.zip", scratch / "train")
    _split_zip(root / "data" / "valid.zip", scratch / "valid", images=1)
    _split_zip(root / "data" / "valid-mini.zip", scratch / "mini", images=1)
    (root / "pcb-defect-segmentation.py").write_text("import datasets  # loading script\n")
    (root / "README.md").write_text("---\ntags: [roboflow2huggingface]\n---\n")
    return root


def test_local_folder_of_the_layout(tmp_path: Path) -> None:
    repo = _repository(tmp_path / "repo", tmp_path / "scratch")
    results = convert_hf(repo, tmp_path / "data")
    assert {r.split: r.images for r in results} == {"train": 2, "valid": 1}  # not valid-mini
    dataset = CocoDataset.from_split_dir(tmp_path / "data" / "train")
    assert [c.prompt for c in dataset.categories] == ["a cat", "dog"]
    assert sum(len(dataset.instances(k)) for k in range(len(dataset))) == 4
    (mini,) = convert_hf(repo, tmp_path / "mini", "valid-mini")
    assert mini.split == "valid-mini"


def test_zip_of_the_layout_and_single_split_zip(tmp_path: Path) -> None:
    repo = _repository(tmp_path / "repo", tmp_path / "scratch")
    bundle = tmp_path / "pcb.zip"
    with zipfile.ZipFile(bundle, "w") as archive:
        for file in repo.rglob("*"):
            archive.write(file, Path("pcb-defect-segmentation") / file.relative_to(repo))
    (valid,) = convert_hf(bundle, tmp_path / "data", "validation")
    assert (valid.split, valid.images) == ("valid", 1)
    (train,) = convert_hf(repo / "data" / "train.zip", tmp_path / "single")
    assert (train.split, train.images) == ("train", 2)


def test_hub_id_is_read_from_the_cache_offline(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    storage = cache / "datasets--keremberke--pcb-defect-segmentation"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(commit)
    _repository(storage / "snapshots" / commit, tmp_path / "scratch")
    results = convert_hf(
        "keremberke/pcb-defect-segmentation",
        tmp_path / "data",
        cache_dir=cache,
        local_files_only=True,
    )
    assert sorted(r.split for r in results) == ["train", "valid"]


def test_broken_layouts(tmp_path: Path) -> None:
    evil = tmp_path / "evil" / "data" / "train.zip"
    _split_zip(evil, tmp_path / "scratch")
    with zipfile.ZipFile(evil, "a") as archive:
        archive.writestr("../../escaped.txt", "x")
    with pytest.raises(DatasetError, match=r"train\.zip: member '\.\./\.\./escaped\.txt' would be"):
        convert_hf(tmp_path / "evil", tmp_path / "data")
    assert not (tmp_path / "escaped.txt").exists()
    repo = _repository(tmp_path / "repo", tmp_path / "scratch2")
    with pytest.raises(DatasetError, match=r"has no split 'test' \(data/: \['train', 'valid'"):
        convert_hf(repo, tmp_path / "x", "test")
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("notes.txt", "hello")
    with pytest.raises(DatasetError, match=r"other\.zip holds neither data/<split>\.zip"):
        convert_hf(other, tmp_path / "y")
    broken = tmp_path / "broken" / "data" / "train.zip"
    broken.parent.mkdir(parents=True)
    with zipfile.ZipFile(broken, "w") as archive:
        archive.writestr("_annotations.coco.json", json.dumps({"images": "nope"}))
    with pytest.raises(DatasetError, match=r"train\.zip: .*'images' must be a list"):
        convert_hf(tmp_path / "broken", tmp_path / "z")
