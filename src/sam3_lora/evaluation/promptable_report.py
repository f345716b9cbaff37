"""Reports of the promptable evaluation: ``metrics.json``, ``report.md``, a self-contained
``report.html`` with a worst-first gallery, and the console tables. Built from the shared
pieces of :mod:`sam3_lora.evaluation.report_page`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.table import Table

from sam3_lora.data.coco import CocoDataset
from sam3_lora.evaluation.promptable import PROMPT_KINDS, SCORES, PromptableRun
from sam3_lora.evaluation.report_page import (
    GalleryItem,
    Rows,
    category_comparison,
    console_table,
    describe_models,
    ground_truth_panel,
    html_report,
    markdown_report,
    overall_comparison,
    write_metrics,
    write_pages,
)
from sam3_lora.evaluation.vocabulary import METRICS, PROMPTABLE_METRICS
from sam3_lora.predict.visualize import draw_predictions, side_by_side

OVERALL = tuple(f"{prefix}{score}" for _, _, prefix in PROMPT_KINDS.values() for score in SCORES)
PER_CATEGORY = ("miou", "dice", "point_miou", "points3_miou")


def overall_rows(metrics: dict[str, Any]) -> Rows:
    """Metric, each model, and the difference (adapter - base)."""
    return overall_comparison(metrics, (*OVERALL, "instances"), missing="")


def category_rows(
    metrics: dict[str, Any], keys: tuple[str, ...] = PER_CATEGORY, compact: bool = False
) -> Rows:
    """Per category: instances and each metric of every model side by side (``compact``: the
    models' values of a metric in one cell, ``base / adapter``, for narrow consoles)."""
    return category_comparison(metrics, keys, ("instances", "instances"), compact)


def comparison_tables(metrics: dict[str, Any]) -> list[Table]:
    """The overall and per-category tables for the console."""
    title = (
        f"{metrics['family']} evaluation on {metrics.get('split', '')} ({metrics['num_images']} "
        f"images, mask threshold {metrics['mask_threshold']}; box, 1-click and 3-click prompts)"
    )
    return [
        console_table(table_title, header, rows)
        for (header, rows), table_title in (
            (overall_rows(metrics), title),
            (
                category_rows(metrics, compact=True),
                "per category (all numbers: report.md, instances.csv)",
            ),
        )
    ]


def render_gallery(
    coco: CocoDataset, runs: dict[str, PromptableRun], size: int = 8
) -> list[GalleryItem]:
    """Worst images first (the last run's mean box-prompt IoU): ground truth, then each model's
    box-prompted masks, labelled with their IoU."""
    if not runs or size <= 0:
        return []
    primary = list(runs.values())[-1]
    scores = primary.image_scores()
    names = {c.id: c.name for c in coco.categories}
    items = []
    for image_id in sorted(scores, key=scores.get)[:size]:
        index = coco.index_of_image(image_id)
        image = coco.load_image(index)
        rows = [r for r in primary.instances if r["image_id"] == image_id]
        by_id = {i.annotation_id: i for i in coco.instances(index)}
        instances = [by_id[r["annotation_id"]] for r in rows]
        labels = [names[r["category_id"]] for r in rows]
        panels = [ground_truth_panel(image, instances, names)]
        for name, run in runs.items():
            masks = _to_image_size(run.box_masks.get(image_id), image.size)
            ious = [r["iou"] for r in run.instances if r["image_id"] == image_id]
            boxes = [i.box_xyxy for i in instances]
            title = f"{name}: box prompts, mean IoU {np.mean(ious):.2f}"
            panels.append((title, draw_predictions(image, masks, boxes, labels, ious)))
        items.append(GalleryItem(coco.images[index].file_name, side_by_side(panels)))
    return items


def _to_image_size(masks: np.ndarray | None, size: tuple[int, int]) -> list[np.ndarray]:
    if masks is None:
        return []
    return [
        np.asarray(Image.fromarray(m).resize(size, Image.Resampling.NEAREST), dtype=bool)
        for m in masks
    ]


def write_reports(
    metrics: dict[str, Any],
    runs: dict[str, PromptableRun],
    coco: CocoDataset,
    output_dir: str | Path,
    gallery_size: int = 8,
) -> dict[str, Path]:
    """Write ``metrics.json``, ``report.md`` and ``report.html``; returns their paths."""
    output_dir = Path(output_dir)
    files = {"metrics.json": write_metrics(metrics, output_dir)}
    overall, categories = overall_rows(metrics), category_rows(metrics)
    intro = _intro(metrics)
    definitions = {key: METRICS[key] for key in PROMPTABLE_METRICS}
    markdown = markdown_report(
        intro,
        overall,
        categories,
        definitions,
        lead="Per instance: instances.csv. Metric definitions:",
    )
    gallery = render_gallery(coco, runs, gallery_size)
    page = html_report(intro, overall, categories, gallery, definitions)
    files.update(write_pages(output_dir, markdown, page))
    return files


def _intro(metrics: dict[str, Any]) -> list[str]:
    return [
        f"dataset: {metrics['dataset']} ({metrics.get('split', '')}), {metrics['num_images']} "
        f"images, {metrics['num_categories']} categories, scored at "
        f"{metrics['resolution']} px, mask threshold {metrics['mask_threshold']}",
        *[f"prompts {kind}: {text}" for kind, text in metrics["prompts"].items()],
        *describe_models(metrics),
    ]
