"""Summary tables of the ``sam3-lora data`` commands, sized for an 80-column terminal.

Headers never wrap (each column is at least as wide as its header); long values such as split
names fold inside their cell. File paths are printed above a table, not in it. Colour is left to
the console, which writes none when the output is not a terminal.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.table import Table

from sam3_lora.data.convert.writer import ConversionResult
from sam3_lora.data.validate import SplitReport

CONVERSION_COLUMNS = (
    "images", "objects", "box only", "classes", "missing", "skipped", "dropped", "warnings",
)  # fmt: skip


def _table(title: str, first: str, columns: Sequence[str]) -> Table:
    table = Table(
        title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True
    )
    table.add_column(first, overflow="fold", min_width=len(first))
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True, min_width=len(column))
    return table


def conversion_table(results: Sequence[ConversionResult], title: str = "converted") -> Table:
    """One row per split written: images, objects, box-only objects, classes and what was lost."""
    table = _table(title, "split", CONVERSION_COLUMNS)
    for result in results:
        table.add_row(
            result.split,
            str(result.images),
            str(result.annotations),
            str(result.box_only),
            str(result.categories),
            str(result.missing),
            str(result.skipped),
            str(result.dropped),
            str(len(result.warnings)),
        )
    return table


def validation_table(reports: Sequence[SplitReport]) -> Table:
    """One row per annotation file checked."""
    table = _table(
        "validate", "split", ("images", "annotations", "categories", "errors", "warnings")
    )
    for report in reports:
        table.add_row(
            report.split or report.annotation_file.parent.name,
            str(report.images),
            str(report.annotations),
            str(report.categories),
            str(len(report.errors)),
            str(len(report.warnings)),
        )
    return table


def prompt_table(report: SplitReport) -> Table:
    """The prompts training will use on one split, with the objects and images each must find."""
    table = _table(f"prompts ({report.split})", "prompt", ("id", "objects", "images", "crowd"))
    table.add_column("synonyms", overflow="fold")
    for prompt in report.prompts:
        text = prompt.prompt if prompt.prompt == prompt.name else f"{prompt.prompt} ({prompt.name})"
        table.add_row(
            text,
            str(prompt.category_id),
            str(prompt.instances),
            str(prompt.images),
            str(prompt.crowd),
            ", ".join(prompt.synonyms),
        )
    return table
