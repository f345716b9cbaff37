"""Evaluation reports: ``metrics.json``, ``report.md``, a self-contained ``report.html``, and
the rich tables printed at the end of ``sam3-lora evaluate``.

The HTML page makes no network request: styles are inline and the gallery images are embedded
as base64 PNG. The gallery shows the worst images first (lowest mean IoU over the category
prompts, absent categories included), ground truth / base / adapter side by side. The page
skeleton shared with the promptable report is :mod:`sam3_lora.evaluation.report_page`; this
module adds SAM3's metrics, the score-threshold sweep and the retention section.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from rich.table import Table

from sam3_lora.evaluation.report_page import (
    GalleryItem,
    Rows,
    category_comparison,
    console_table,
    describe_models,
    format_value,
    ground_truth_panel,
    html_bullets,
    html_report,
    html_table,
    markdown_bullets,
    markdown_report,
    markdown_table,
    model_cells,
    model_columns,
    overall_comparison,
    write_metrics,
    write_pages,
)
from sam3_lora.predict.visualize import draw_predictions, png_data_uri, side_by_side

if TYPE_CHECKING:
    from sam3_lora.data.coco import CocoDataset
    from sam3_lora.evaluation.runner import ModelRun

#: Overall metrics shown in the tables, in order, with a short description.
HEADLINE = {
    "segm/AP": "mask AP@[.50:.95] (COCOeval)",
    "segm/AP50": "mask AP@.50",
    "segm/AP75": "mask AP@.75",
    "segm/AP_small": "mask AP, small objects",
    "segm/AP_medium": "mask AP, medium objects",
    "segm/AP_large": "mask AP, large objects",
    "segm/AR@100": "mask AR, 100 detections",
    "bbox/AP": "box AP@[.50:.95]",
    "bbox/AP50": "box AP@.50",
    "bbox/AP75": "box AP@.75",
    "bbox/AR@100": "box AR, 100 detections",
    "cgF1": "SAM3 cgF1 (masks), IoU .50:.95",
    "cgF1@50": "cgF1 at IoU .50",
    "cgF1@75": "cgF1 at IoU .75",
    "positive_micro_F1": "positive micro F1 (masks)",
    "IL_MCC": "image-level MCC (is the concept there?)",
    "bbox/cgF1": "cgF1 (boxes)",
    "miou": "mask IoU of the union, pairs with ground truth",
    "dice": "mask Dice of the union, pairs with ground truth",
    "giou": "IoU over every prompt, absent ones scoring 1 when silent (gRefCOCO's gIoU)",
    "absent_fire_rate": "absent categories with a prediction (lower is better)",
    "negative_fire_rate": "negative prompts with a prediction (lower is better)",
    "retention": "base detections on concepts outside the dataset the adapter still finds",
    "retention_iou": "mask IoU between base and adapter answers on those concepts",
}
PER_CATEGORY = ("segm/AP", "bbox/AP", "cgF1", "positive_micro_F1", "miou", "dice")
CONSOLE_PER_CATEGORY = ("segm/AP", "cgF1", "miou")
SWEEP_COLUMNS = ("cgF1", "giou", "miou", "absent_fire_rate", "negative_fire_rate")
CONSOLE_SWEEP_COLUMNS = ("cgF1", "giou", "miou", "absent_fire_rate")
SWEEP_PLOT = "threshold_sweep.png"
GALLERY_PNG = "gallery.png"
GALLERY_PNG_ROWS = 4


def overall_rows(metrics: dict[str, Any]) -> Rows:
    """Header and rows of the overall table: metric, each model, and the difference."""
    return overall_comparison(metrics, HEADLINE)


def category_rows(metrics: dict[str, Any], keys: tuple[str, ...] = PER_CATEGORY) -> Rows:
    """Header and rows of the per-category table (every model's numbers side by side)."""
    return category_comparison(metrics, keys, ("images", "images_with_gt"))


def _swept_models(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m: block for m, block in metrics["models"].items() if block.get("threshold_sweep")}


def sweep_rows(
    metrics: dict[str, Any], keys: tuple[str, ...] = SWEEP_COLUMNS, compact: bool = False
) -> Rows:
    """Header and rows of the score-threshold sweep: one row per threshold, models side by side.

    The best-cgF1 threshold of each model is marked with ``*``. ``compact`` puts every model's
    value of a metric in one cell (``base / adapter``), for narrow consoles.
    """
    models = _swept_models(metrics)
    if not models:
        return [], []
    header = ["threshold", *model_columns(keys, models, compact)]
    thresholds = [row["threshold"] for row in next(iter(models.values()))["threshold_sweep"]]
    rows = []
    for index, threshold in enumerate(thresholds):
        row = [f"{threshold:g}"]
        for key in keys:
            cells = []
            for block in models.values():
                cell = format_value(block["threshold_sweep"][index][key])
                best = block.get("best_threshold") or {}
                if key == "cgF1" and best.get("threshold") == threshold:
                    cell += "*"
                cells.append(cell)
            row.extend(model_cells(cells, compact))
        rows.append(row)
    return header, rows


def plot_threshold_sweep(metrics: dict[str, Any], output_path: str | Path) -> Path | None:
    """cgF1, gIoU, mIoU and false alarms against the score threshold, one line per model."""
    models = _swept_models(metrics)
    if not models:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 4, figsize=(15, 3.6), sharex=True)
    panels = (
        ("cgF1", "cgF1 (Meta)"),
        ("giou", "gIoU (all prompts)"),
        ("miou", "mIoU (prompts with objects)"),
        ("absent_fire_rate", "absent categories answered"),
    )
    for axis, (key, title) in zip(axes, panels, strict=True):
        for name, block in models.items():
            rows = block["threshold_sweep"]
            style = "o--" if name == "base" else "o-"
            axis.plot([r["threshold"] for r in rows], [r[key] for r in rows], style, label=name)
        axis.axvline(metrics["score_threshold"], color="grey", linewidth=0.8, linestyle=":")
        axis.set_title(title)
        axis.set_xlabel("score threshold")
        axis.set_ylim(0, 1)
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(output_path, dpi=100)
    plt.close(figure)
    return Path(output_path)


def comparison_tables(metrics: dict[str, Any]) -> list[Table]:
    """The overall, per-category and threshold-sweep tables for the console."""
    from sam3_lora.evaluation.retention import concept_rows, retention_title

    title = (
        f"evaluation on {metrics.get('split', '')} ({metrics['num_images']} images, "
        f"{metrics['num_categories']} categories, threshold {metrics['score_threshold']})"
    )
    return [
        console_table(table_title, header, rows, overflow="fold")
        for (header, rows), table_title in (
            (overall_rows(metrics), title),
            (category_rows(metrics, CONSOLE_PER_CATEGORY), "per category (all numbers: report.md)"),
            (
                sweep_rows(metrics, CONSOLE_SWEEP_COLUMNS, compact=True),
                "by score threshold (* = best cgF1: an operating point for predict --threshold)",
            ),
            (concept_rows(metrics.get("retention", {})), retention_title(metrics)),
        )
        if header and rows
    ]


def _verification_line(metrics: dict[str, Any]) -> list[str]:
    block = metrics.get("negative_verification")
    return [block["summary"]] if block else []


def render_gallery(
    coco: CocoDataset, runs: dict[str, ModelRun], threshold: float, size: int = 8
) -> list[GalleryItem]:
    """Worst images first (by the last run's mean pair IoU): ground truth and each model."""
    from sam3_lora.evaluation.scored_files import decode_result

    if not runs or size <= 0:
        return []
    primary = list(runs.values())[-1]
    worst = sorted(primary.image_scores, key=primary.image_scores.get)[:size]
    names = {c.id: c.name for c in coco.categories}
    items = []
    for image_id in worst:
        index = coco.index_of_image(image_id)
        image = coco.load_image(index)
        instances = [i for i in coco.instances(index) if not i.iscrowd]
        panels = [ground_truth_panel(image, instances, names)]
        for name, run in runs.items():
            kept = [r for r in run.results if r["image_id"] == image_id and r["score"] >= threshold]
            kept.sort(key=lambda r: -r["score"])
            boxes = [[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in kept)]
            masks = np.stack([decode_result(r) for r in kept]) if kept else []
            labels = [names[r["category_id"]] for r in kept]
            scores = [r["score"] for r in kept]
            title = f"{name}: mean IoU {run.image_scores[image_id]:.2f}"
            panels.append((title, draw_predictions(image, masks, boxes, labels, scores)))
        items.append(GalleryItem(coco.images[index].file_name, side_by_side(panels)))
    return items


def stack_sheets(sheets: list[Image.Image], gap: int = 6) -> Image.Image:
    """Gallery rows one under the other, on one white page."""
    width = max(sheet.width for sheet in sheets)
    height = sum(sheet.height for sheet in sheets) + gap * (len(sheets) - 1)
    page = Image.new("RGB", (width, height), (255, 255, 255))
    y = 0
    for sheet in sheets:
        page.paste(sheet, (0, y))
        y += sheet.height + gap
    return page


def write_reports(
    metrics: dict[str, Any],
    gallery: list[GalleryItem],
    output_dir: str | Path,
    retention_gallery: list[GalleryItem] | None = None,
) -> dict[str, Path]:
    """Write ``metrics.json``, ``report.md``, ``report.html`` and ``gallery.png`` (the worst
    images, ground truth and each model side by side; in the HTML also the images where the
    adapter lost most of the base's detections); returns their paths."""
    from sam3_lora.evaluation.retention import concept_rows, retention_html

    output_dir = Path(output_dir)
    files = {"metrics.json": write_metrics(metrics, output_dir)}
    if gallery:
        files[GALLERY_PNG] = output_dir / GALLERY_PNG
        stack_sheets([item.sheet for item in gallery[:GALLERY_PNG_ROWS]]).save(files[GALLERY_PNG])

    overall, categories, sweep = overall_rows(metrics), category_rows(metrics), sweep_rows(metrics)
    plot = plot_threshold_sweep(metrics, output_dir / SWEEP_PLOT)
    if plot is not None:
        files[SWEEP_PLOT] = plot
    best = _best_threshold_lines(metrics)
    intro = _intro(metrics)
    retention = concept_rows(metrics["retention"]) if "retention" in metrics else ([], [])
    markdown = markdown_report(
        intro,
        overall,
        categories,
        HEADLINE,
        sections=[*_sweep_markdown(best, sweep), *_retention_markdown(metrics, retention)],
    )
    page = html_report(
        intro,
        overall,
        categories,
        gallery,
        HEADLINE,
        before_gallery=_sweep_html(best, sweep, plot),
        after_gallery=(
            retention_html(metrics, retention, retention_gallery or []) if retention[1] else ""
        ),
    )
    files.update(write_pages(output_dir, markdown, page))
    return files


def _intro(metrics: dict[str, Any]) -> list[str]:
    return [
        f"dataset: {metrics['dataset']} ({metrics.get('split', '')}), {metrics['num_images']} "
        f"images, {metrics['num_categories']} categories, "
        f"{metrics['negative_prompts_per_image']} negative prompts per image",
        f"score threshold {metrics['score_threshold']}, mask threshold {metrics['mask_threshold']}",
        *describe_models(metrics),
        *_verification_line(metrics),
    ]


def _best_threshold_lines(metrics: dict[str, Any]) -> list[str]:
    return [
        f"{name}: best cgF1 {block['best_threshold']['cgF1']:.3f} at score threshold "
        f"{block['best_threshold']['threshold']:g}"
        for name, block in metrics["models"].items()
        if block.get("best_threshold")
    ]


def _sweep_markdown(best: list[str], sweep: Rows) -> list[str]:
    if not sweep[0]:
        return []
    return [
        "## By score threshold",
        "",
        *markdown_bullets(best),
        "",
        markdown_table(*sweep),
        "",
        f"![metrics by score threshold]({SWEEP_PLOT})",
        "",
    ]


def _retention_markdown(metrics: dict[str, Any], retention: Rows) -> list[str]:
    from sam3_lora.evaluation.retention import retention_title

    if not retention[1]:
        return []
    return ["## Retention", "", retention_title(metrics), "", markdown_table(*retention), ""]


def _sweep_html(best: list[str], sweep: Rows, plot: Path | None) -> str:
    if not sweep[0]:
        return ""
    image = ""
    if plot is not None:
        with Image.open(plot) as picture:
            uri = png_data_uri(picture)
        image = f'<figure><img alt="metrics by score threshold" src="{uri}"></figure>'
    return f"<h2>By score threshold</h2>{html_bullets(best)}{html_table(*sweep)}{image}"


__all__ = ["GalleryItem", "comparison_tables", "render_gallery", "write_reports"]
