"""What the two evaluation reports share: SAM3's (:mod:`sam3_lora.evaluation.report`) and the
promptable SAM2 / SAM3-tracker one (:mod:`sam3_lora.evaluation.promptable_report`).

Cell formatting, the overall and per-category tables (markdown, HTML and console), strict
``metrics.json``, the gallery's ground-truth panel, and the skeleton of ``report.md`` and the
self-contained ``report.html`` (inline style, gallery embedded as PNG): intro, overall, per
category, the report's own sections, worst images first, metric definitions. Each report module
keeps its own metrics, sections and gallery.
"""

from __future__ import annotations

import html
import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from rich.table import Table

from sam3_lora.data.jsonio import write_json
from sam3_lora.evaluation.vocabulary import LOWER_IS_BETTER
from sam3_lora.predict.visualize import draw_predictions, png_data_uri

if TYPE_CHECKING:
    from rich.console import OverflowMethod

    from sam3_lora.data.coco import Instance

#: A table: its header and its rows of cells.
Rows = tuple[list[str], list[list[str]]]

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead { background: #f0f0f0; }
figure { margin: 1em 0; } figcaption { font-size: 13px; color: #555; }
img { max-width: 100%; border: 1px solid #ddd; }
"""


@dataclass
class GalleryItem:
    """One gallery row: a side-by-side sheet and what it shows."""

    title: str
    sheet: Image.Image


def format_value(value: Any) -> str:
    """A table cell: floats to three decimals (NaN as ``n/a``), anything else as text."""
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def format_difference(value: float, key: str) -> str:
    """A signed difference, marked ``▲`` where it is an improvement of metric ``key``."""
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    better = value < 0 if key in LOWER_IS_BETTER else value > 0
    sign = "+" if value >= 0 else ""
    return f"{sign}{value:.3f}" + (" ▲" if better and abs(value) > 1e-9 else "")


def model_columns(keys: Iterable[str], models: Collection[str], compact: bool = False) -> list[str]:
    """Columns of each metric for every model: ``key (model)``, plain ``key`` for one model, or
    with ``compact`` one ``key (base / adapter)`` column per metric."""
    names = " / ".join(models)
    header = []
    for key in keys:
        if compact and len(models) > 1:
            header.append(f"{key} ({names})")
        else:
            header.extend(f"{key} ({m})" if len(models) > 1 else key for m in models)
    return header


def model_cells(cells: list[str], compact: bool) -> list[str]:
    """One metric's cells of every model: as they are, or with ``compact`` joined into one."""
    return [" / ".join(cells)] if compact else cells


def overall_comparison(metrics: dict[str, Any], keys: Iterable[str], missing: str = "n/a") -> Rows:
    """Metric, each model's overall value and, when both models ran, the difference
    (adapter − base); ``missing`` stands for a difference that was not computed."""
    models = metrics["models"]
    header = ["metric", *models]
    if "difference" in metrics:
        header.append("adapter − base")
    rows = []
    for key in keys:
        row = [key, *(format_value(models[m]["overall"].get(key, float("nan"))) for m in models)]
        if "difference" in metrics:
            difference = metrics["difference"].get(key)
            row.append(missing if difference is None else format_difference(difference, key))
        rows.append(row)
    return header, rows


def category_comparison(
    metrics: dict[str, Any], keys: Iterable[str], count: tuple[str, str], compact: bool = False
) -> Rows:
    """Per category: a count (``count``: its column name and per-category key), then each metric
    of every model side by side (``compact`` as in :func:`model_columns`)."""
    models = metrics["models"]
    column, count_key = count
    header = ["category", column, *model_columns(keys, models, compact)]
    rows = []
    first = next(iter(models.values()))["per_category"]
    for name, values in first.items():
        row = [name, str(values[count_key])]
        for key in keys:
            cells = [format_value(models[m]["per_category"][name][key]) for m in models]
            row.extend(model_cells(cells, compact))
        rows.append(row)
    return header, rows


def console_table(
    title: str, header: list[str], rows: list[list[str]], overflow: OverflowMethod = "ellipsis"
) -> Table:
    """A console table: the metric or category column left-aligned, the numbers right."""
    table = Table(title=title)
    for column in header:
        table.add_column(
            column,
            justify="left" if column in ("metric", "category") else "right",
            overflow=overflow,
        )
    for row in rows:
        table.add_row(*row)
    return table


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


def html_table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table, every cell escaped."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def describe_models(metrics: dict[str, Any]) -> list[str]:
    """One intro line per model: where it came from and how fast it ran."""
    return [
        f"{name}: {block['source']} ({block['seconds']} s, {block['images_per_second']} img/s)"
        for name, block in metrics["models"].items()
    ]


def markdown_bullets(lines: Iterable[str]) -> list[str]:
    """Markdown list items, one per line."""
    return [f"- {line}" for line in lines]


def markdown_report(
    intro: list[str],
    overall: Rows,
    categories: Rows,
    definitions: dict[str, str],
    sections: Iterable[str] = (),
    lead: str = "Metric definitions:",
) -> str:
    """``report.md``: the intro, the overall and per-category tables, the report's own
    ``sections`` (markdown lines), then the metric ``definitions`` under ``lead``."""
    lines = [
        "# Evaluation report",
        "",
        *markdown_bullets(intro),
        "",
        "## Overall",
        "",
        markdown_table(*overall),
        "",
        "## Per category",
        "",
        markdown_table(*categories),
        "",
        *sections,
        lead,
        "",
        *[f"- `{key}`: {text}" for key, text in definitions.items()],
        "",
    ]
    return "\n".join(lines)


def html_bullets(lines: Iterable[str]) -> str:
    """An HTML list, one escaped item per line."""
    return "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>"


def gallery_figures(gallery: Iterable[GalleryItem]) -> str:
    """The gallery rows as captioned ``<figure>`` elements, each sheet embedded as a PNG."""
    return "".join(
        f'<figure><img alt="{html.escape(item.title)}" src="{png_data_uri(item.sheet)}">'
        f"<figcaption>{html.escape(item.title)}</figcaption></figure>"
        for item in gallery
    )


def ground_truth_panel(
    image: Image.Image, instances: list[Instance], names: dict[int, str]
) -> tuple[str, Image.Image]:
    """A gallery row's first panel: the ground-truth instances, labelled with their category."""
    return (
        "ground truth",
        draw_predictions(
            image,
            [i.mask for i in instances if i.mask is not None],
            [i.box_xyxy for i in instances],
            [names[i.category_id] for i in instances],
        ),
    )


def html_report(
    intro: list[str],
    overall: Rows,
    categories: Rows,
    gallery: list[GalleryItem],
    definitions: dict[str, str],
    before_gallery: str = "",
    after_gallery: str = "",
) -> str:
    """``report.html``, with no network request: the intro, the overall and per-category
    tables, the report's own sections around the worst-first ``gallery``, then the metric
    ``definitions``."""
    terms = "".join(
        f"<li><code>{html.escape(k)}</code>: {html.escape(v)}</li>" for k, v in definitions.items()
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>sam3-lora evaluation</title><style>{STYLE}</style></head><body>"
        "<h1>Evaluation report</h1>"
        + html_bullets(intro)
        + "<h2>Overall</h2>"
        + html_table(*overall)
        + "<h2>Per category</h2>"
        + html_table(*categories)
        + before_gallery
        + "<h2>Worst images first</h2>"
        + (gallery_figures(gallery) or "<p>no images</p>")
        + after_gallery
        + f"<h2>Metrics</h2><ul>{terms}</ul></body></html>"
    )


def write_pages(output_dir: Path, markdown: str, page: str) -> dict[str, Path]:
    """Write ``report.md`` and ``report.html`` into ``output_dir``; returns their paths."""
    files = {"report.md": output_dir / "report.md", "report.html": output_dir / "report.html"}
    files["report.md"].write_text(markdown, encoding="utf-8")
    files["report.html"].write_text(page, encoding="utf-8")
    return files


def json_safe(value: Any) -> Any:
    """NaN -> None, numpy scalars -> Python, int dict keys -> str (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_metrics(metrics: dict[str, Any], output_dir: Path) -> Path:
    """Create ``output_dir`` and write ``metrics.json`` there as strict JSON; returns its path."""
    output_dir.mkdir(parents=True, exist_ok=True)
    return write_json(output_dir / "metrics.json", json_safe(metrics), indent=2)


__all__ = [
    "STYLE",
    "GalleryItem",
    "Rows",
    "category_comparison",
    "console_table",
    "describe_models",
    "format_difference",
    "format_value",
    "gallery_figures",
    "ground_truth_panel",
    "html_bullets",
    "html_report",
    "html_table",
    "json_safe",
    "markdown_bullets",
    "markdown_report",
    "markdown_table",
    "model_cells",
    "model_columns",
    "overall_comparison",
    "write_metrics",
    "write_pages",
]
