"""``sam3-lora data ...`` end to end: exit codes, summary output and one-line errors."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from sam3_lora.cli import main
from tests.data_factory import BAD_DATA, write_coco


def test_create_coco_validate_stats_preview(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    assert main(["data", "create", "--output_dir", str(data)]) == 0
    source = write_coco(tmp_path / "src")
    code = main(
        [
            "data",
            "coco",
            "--coco_json",
            str(source),
            "--output_dir",
            str(data),
            "--split",
            "train",
            "--rle",
        ]
    )
    assert code == 0
    assert "converted" in capsys.readouterr().out
    assert main(["data", "validate", "--data_dir", str(data)]) == 0
    out = capsys.readouterr().out
    assert "validate" in out and "errors" in out
    assert main(["data", "stats", "--data_dir", str(data)]) == 0
    out = capsys.readouterr().out
    assert "dataset" in out and "cat" in out and "512+" in out
    preview = tmp_path / "preview.png"
    assert main(["data", "preview", "--data_dir", str(data), "--output", str(preview)]) == 0
    assert preview.exists()


def test_validate_fails_on_errors_and_fix(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    path = write_coco(data / "train")
    raw = json.loads(path.read_text())
    raw["annotations"][0]["category_id"] = 42
    path.write_text(json.dumps(raw))
    assert main(["data", "validate", "--data_dir", str(data)]) == 1
    out = capsys.readouterr().out
    assert "annotation id 10" in out and "category id 42" in out
    assert main(["data", "validate", "--data_dir", str(data), "--fix", str(tmp_path / "out")]) == 0
    assert main(["data", "validate", "--data_dir", str(tmp_path / "out")]) == 0


def test_broken_input_is_one_red_line(tmp_path: Path, capsys) -> None:
    code = main(
        [
            "data",
            "coco",
            "--coco_json",
            str(BAD_DATA / "wrong_category.json"),
            "--output_dir",
            str(tmp_path),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0]
    assert "wrong_category.json" in err[0] and "annotation id 9" in err[0]
    assert "Traceback" not in "\n".join(err)


def test_yolo_and_split_commands(tmp_path: Path, capsys) -> None:
    from tests.data_factory import write_image

    for i in range(4):
        write_image(tmp_path / "yolo" / "images" / f"{i}.png", 16, 16)
        (tmp_path / "yolo" / "labels").mkdir(exist_ok=True)
        (tmp_path / "yolo" / "labels" / f"{i}.txt").write_text("0 0.5 0.5 0.2 0.2")
    data = tmp_path / "data"
    assert (
        main(
            [
                "data",
                "yolo",
                "--yolo_dir",
                str(tmp_path / "yolo"),
                "--classes",
                "dot",
                "--output_dir",
                str(data),
                "--split",
                "train",
            ]
        )
        == 0
    )
    assert main(["data", "split", "--data_dir", str(data), "--ratios", "0.5", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "split" in out


def test_synth_calls_generator_lazily(tmp_path: Path, monkeypatch) -> None:
    calls = {}

    def fake(
        output_dir, num_train, num_val, seed, style="plain", image_size=256, size_range=None,
        distractors=(),
    ):  # fmt: skip
        calls.update(output_dir=output_dir, num_train=num_train, style=style, size=image_size)
        calls.update(distractors=distractors)
        return Path(output_dir)

    module = types.ModuleType("sam3_lora.data.synthetic")
    module.generate_shapes_dataset = fake
    monkeypatch.setitem(sys.modules, "sam3_lora.data.synthetic", module)
    code = main(
        [
            "data",
            "synth",
            "--output_dir",
            str(tmp_path),
            "--num_train",
            "3",
            "--num_val",
            "1",
            "--image_size",
            "64",
            "--distractors",
            "star",
        ]
    )
    assert code == 0
    assert calls == {
        "output_dir": tmp_path,
        "num_train": 3,
        "style": "plain",
        "size": 64,
        "distractors": ("star",),
    }


@pytest.mark.parametrize("args", [["data"], ["data", "nonsense"]])
def test_help_and_bad_subcommand(args: list[str], capsys) -> None:
    try:
        code = main(args)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["cvat", "--input", str(BAD_DATA / "cvat_truncated.xml")], "cvat_truncated.xml"),
        (["labelstudio", "--input", str(BAD_DATA / "truncated.json")], "truncated.json"),
        (["voc", "--voc_dir", str(BAD_DATA)], "SegmentationObject/"),
        (["hf", "--dataset", str(BAD_DATA / "not_an_image.png")], "not_an_image.png"),
    ],
)
def test_new_converters_fail_with_one_red_line(tmp_path: Path, capsys, args, named) -> None:
    code = main(["data", *args, "--output_dir", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0] and "Traceback" not in err[0]


def test_new_converters_round_trip_through_the_cli(tmp_path: Path, capsys) -> None:
    from tests.data_factory import write_image

    write_image(tmp_path / "images" / "a.png", 20, 10)
    xml = tmp_path / "annotations.xml"
    xml.write_text(
        '<annotations><version>1.1</version><image id="0" name="a.png" width="20" height="10">'
        '<polygon label="coin" points="1,1;9,1;9,9"/></image></annotations>'
    )
    assert main(["data", "cvat", "--input", str(xml), "--output_dir", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "converted" in out and "\x1b[" not in out
    assert main(["data", "validate", "--data_dir", str(tmp_path / "d")]) == 0
