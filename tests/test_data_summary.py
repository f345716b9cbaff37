"""The summary tables fit an 80-column terminal with whole headers and print no colour codes."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from sam3_lora.cli import main
from sam3_lora.data.convert.writer import ConversionResult
from sam3_lora.data.summary import (
    CONVERSION_COLUMNS,
    conversion_table,
    prompt_table,
    validation_table,
)
from sam3_lora.data.validate import PromptCount, SplitReport
from tests.data_factory import write_coco


def _render(table, width: int = 80) -> list[str]:
    console = Console(width=width, file=io.StringIO(), force_terminal=False, color_system=None)
    console.print(table)
    return console.file.getvalue().splitlines()


def _header_line(lines: list[str], headers) -> str:
    return next(line for line in lines if all(h in line for h in headers))


def test_tables_fit_80_columns_without_cutting_headers() -> None:
    big = 999_999  # counts as wide as their headers still fit
    result = ConversionResult(
        Path("/a/very/long/output/folder/valid-mini-extra/_annotations.coco.json"),
        *(big,) * 7,
        warnings=["w"] * 1234,
    )
    lines = _render(conversion_table([result, result]))
    assert max(len(line) for line in lines) <= 80
    _header_line(lines, ("split", *CONVERSION_COLUMNS))
    report = SplitReport(Path("x/train/_annotations.coco.json"), big, big, big, split="train")
    report.prompts = [
        PromptCount(7, "class_3", "a long descriptive prompt " * 3, ("a", "b" * 40), big, big, 3)
    ]
    for table, headers in (
        (validation_table([report]), ("split", "images", "annotations", "categories", "errors")),
        (prompt_table(report), ("prompt", "id", "objects", "images", "crowd", "synonyms")),
    ):
        lines = _render(table)
        assert max(len(line) for line in lines) <= 80
        _header_line(lines, headers)


@pytest.mark.parametrize("command", ["coco", "validate"])
def test_no_colour_codes_when_not_a_terminal(tmp_path: Path, capsys, command: str) -> None:
    source = write_coco(tmp_path / "src")
    if command == "coco":
        args = ["data", "coco", "--coco_json", str(source), "--output_dir", str(tmp_path / "d")]
    else:
        args = ["data", "validate", "--data_dir", str(tmp_path / "src")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "\x1b[" not in out and ("converted" in out or "validate" in out)
