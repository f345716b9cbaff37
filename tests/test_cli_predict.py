"""``sam3-lora predict``: overlays, JSON with RLE masks, COCO auto-labels, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam3_lora.cli import main
from sam3_lora.data.coco import CocoDataset, decode_rle
from sam3_lora.data.validate import validate_dataset
from tests.adapters import make_tiny_adapter


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_adapter(tmp_path_factory.mktemp("adapter") / "final")


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for k, size in enumerate([(60, 80), (72, 72), (50, 90)]):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    return folder


def _check_json(path: Path, height: int, width: int) -> dict:
    data = json.loads(path.read_text())
    assert (data["height"], data["width"]) == (height, width)
    assert len(data["boxes"]) == len(data["scores"]) == len(data["labels"]) == len(data["masks"])
    assert data["masks"], "threshold 0 keeps every query"
    for rle in data["masks"]:
        mask = decode_rle({"size": rle["size"], "counts": rle["counts"].encode()})
        assert mask.shape == (height, width)
    return data


def test_predict_text_writes_png_and_json(
    adapter_dir: Path, images_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.png"
    code = main(
        [
            "predict",
            "--weights",
            str(adapter_dir),
            "--image",
            str(images_dir / "0.png"),
            "--text_prompt",
            "circle",
            "--prompt",
            "star",
            "--threshold",
            "0",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    assert Image.open(out).size == (80, 60)
    data = _check_json(tmp_path / "out.json", 60, 80)
    assert set(data["labels"]) == {"circle", "star"}


def test_predict_boxes_only(adapter_dir: Path, images_dir: Path, tmp_path: Path) -> None:
    code = main(
        [
            "predict",
            "--adapter",
            str(adapter_dir),
            "--image",
            str(images_dir / "1.png"),
            "--bboxes",
            "[10, 10, 40, 50]",
            "--negative_bboxes",
            "[[50, 50, 70, 70]]",
            "--threshold",
            "0",
            "--output",
            str(tmp_path),
        ]
    )
    assert code == 0
    data = _check_json(tmp_path / "1.json", 72, 72)
    assert set(data["labels"]) == {"object"}
    assert (tmp_path / "1.png").is_file()


@pytest.mark.parametrize("segmentation", ["rle", "polygon"])
def test_folder_with_a_broken_image_and_coco_auto_labels(
    adapter_dir: Path,
    images_dir: Path,
    tmp_path: Path,
    segmentation: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    coco_file = tmp_path / "labels" / "_annotations.coco.json"
    code = main(
        [
            "predict",
            "--adapter",
            str(adapter_dir),
            "--image",
            str(images_dir),
            "--text_prompt",
            "circle",
            "--threshold",
            "0.2",
            "--output",
            str(tmp_path / "out"),
            "--save_coco",
            str(coco_file),
            "--coco_segmentation",
            segmentation,
            "--batch_size",
            "2",
        ]
    )
    assert code == 0
    output = capsys.readouterr().out
    assert "1 image(s) could not be read" in output and "broken.jpg" in output
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["0.png", "1.png", "2.png"]
    reports = validate_dataset(tmp_path / "labels")
    assert [issue.message for issue in reports[0].errors] == []
    dataset = CocoDataset(coco_file)
    assert len(dataset) == 3 and [c.name for c in dataset.categories] == ["circle"]
    assert sum(len(dataset.instances(i)) for i in range(3)) > 0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--text_prompt", ""], "text prompt '' is empty"),
        (["--text_prompt", "circle", "--bboxes", "[[1, 2"], "--bboxes '[[1, 2' is not JSON"),
        (["--weights", "{missing}", "--text_prompt", "circle"], "do not exist"),
        (["--image", "{broken}", "--text_prompt", "circle"], "cannot be decoded"),
        (["--text_prompt", "circle", "--nms_iou_threshold", "0"], "use a value in (0, 1]"),
    ],
)
def test_errors_are_one_clear_line(
    adapter_dir: Path,
    images_dir: Path,
    tmp_path: Path,
    arguments: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    values = {"missing": str(tmp_path / "nope"), "broken": str(images_dir / "broken.jpg")}
    arguments = [a.format(**values) for a in arguments]
    base = ["predict", "--weights", str(adapter_dir), "--image", str(images_dir / "0.png")]
    base += ["--output", str(tmp_path / "o.png")]
    code = main(base + arguments)
    error = capsys.readouterr().err
    assert code == 2
    assert message in error and "Traceback" not in error
    assert len([line for line in error.splitlines() if "error:" in line]) == 1
