"""Evaluate SAM2 / SAM3's tracker (base, adapted, or both) on a COCO split, prompt by prompt.

Every ground-truth instance is prompted three ways, with Meta's deterministic evaluation
prompts (:func:`~sam3_lora.tasks.promptable.prompts.eval_prompts`):

- ``box``: the mask's box, no noise;
- ``point``: one positive click at the mask's centre-most pixel;
- ``points3``: that click, then two corrective clicks, each at the centre of the largest error
  region of the previous prediction (Meta's interactive evaluation), the previous mask fed back.

Each object's final mask (the one with the highest predicted IoU, thresholded at
``evaluation.mask_threshold``) is scored against its ground truth at the model's input resolution,
as in training validation (``val/miou`` of a run is ``miou`` here): IoU, Dice and boundary F1
(F-measure of boundary pixels matched within ``0.008 x`` the image diagonal, as DAVIS). Metrics
are means over instances, overall and per category; ``instances.csv`` lists every instance.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from scipy.ndimage import binary_erosion, distance_transform_edt
from tqdm.auto import tqdm

from sam3_lora.config import Config
from sam3_lora.data.coco import CocoDataset
from sam3_lora.evaluation.vocabulary import METRICS, PROMPTABLE_METRICS
from sam3_lora.tasks.promptable.module import PromptableModel
from sam3_lora.tasks.promptable.samples import PromptDataset, collate_prompt_samples
from sam3_lora.tasks.promptable.validation import mask_logit_threshold

logger = logging.getLogger(__name__)

#: Prompt kind -> (first prompt, corrective clicks after it) and its metric-name prefix.
PROMPT_KINDS = {
    "box": ("box", 0, ""),
    "point": ("point", 0, "point_"),
    "points3": ("point", 2, "points3_"),
}
SCORES = ("miou", "dice", "boundary_f1")
BOUNDARY_TOLERANCE = 0.008  # of the image diagonal (DAVIS)


@dataclass
class PromptableRun:
    """What one model produced on the split.

    Attributes:
        instances: per ground-truth instance, its ids and ``<prefix>iou`` / ``dice`` /
            ``boundary_f1`` per prompt kind.
        box_masks: per image id, the box-prompt masks (bool [N, S, S]) for the gallery.
    """

    name: str
    source: str
    instances: list[dict[str, Any]] = field(default_factory=list)
    box_masks: dict[int, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0

    def image_scores(self) -> dict[int, float]:
        """image id -> mean box-prompt IoU of its instances (worst first in the gallery)."""
        scores: dict[int, list[float]] = {}
        for row in self.instances:
            scores.setdefault(row["image_id"], []).append(row["iou"])
        return {image: float(np.mean(values)) for image, values in scores.items()}


def boundary_f1(predicted: np.ndarray, target: np.ndarray, tolerance: float) -> float:
    """F-measure of the boundary pixels of two bool masks, matched within ``tolerance`` px."""
    if not predicted.any() and not target.any():
        return 1.0
    if not predicted.any() or not target.any():
        return 0.0

    def edges(mask: np.ndarray) -> np.ndarray:
        return mask & ~binary_erosion(mask, border_value=0)

    pred_edges, true_edges = edges(predicted), edges(target)
    to_true = distance_transform_edt(~true_edges)
    to_pred = distance_transform_edt(~pred_edges)
    precision = float((to_true[pred_edges] <= tolerance).mean())
    recall = float((to_pred[true_edges] <= tolerance).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _final_masks(outputs: Any, size: tuple[int, int], cut: float, count: int) -> torch.Tensor:
    """bool [N, H, W]: each object's best final-step mask upsampled to ``size``, thresholded."""
    masks = torch.zeros((count, *size), dtype=torch.bool)
    for prediction in outputs.final():
        logits = prediction.best_mask_logits().float()[:, None]
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        masks[prediction.object_index.cpu()] = (logits[:, 0] > cut).cpu()
    return masks


@torch.no_grad()
def run_model(
    module: PromptableModel,
    dataset: PromptDataset,
    name: str,
    source: str,
    batch_size: int = 4,
    mask_threshold: float = 0.5,
    device: torch.device | str = "cpu",
) -> PromptableRun:
    """Prompt every instance of ``dataset`` in each of :data:`PROMPT_KINDS`."""
    run = PromptableRun(name=name, source=source)
    started = time.perf_counter()
    cut = mask_logit_threshold(mask_threshold)
    coco = dataset.coco
    module.eval()
    progress = tqdm(total=len(dataset), desc=f"evaluating {name}", unit="img", leave=False)
    for start in range(0, len(dataset), batch_size):
        samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = collate_prompt_samples(samples).to(device)
        progress.update(len(samples))
        if batch.num_objects == 0:
            continue
        embeddings = module.image_embeddings(batch.pixel_values)
        targets = batch.target_masks.cpu()
        size = tuple(targets.shape[-2:])
        tolerance = max(1.0, BOUNDARY_TOLERANCE * math.hypot(*size))
        rows = [
            {
                "image_id": coco.images[int(batch.image_indices[i])].id,
                "annotation_id": int(batch.annotation_ids[k]),
                "category_id": int(batch.category_ids[k]),
            }
            for k, i in enumerate(batch.object_image_index.tolist())
        ]
        for kind, (prompt, clicks, prefix) in PROMPT_KINDS.items():
            outputs = module(
                batch, prompt=prompt, correction_clicks=clicks, image_embeddings=embeddings
            )
            masks = _final_masks(outputs, size, cut, batch.num_objects)
            overlap = (masks & targets).flatten(1).sum(1).float()
            union = (masks | targets).flatten(1).sum(1).float()
            areas = masks.flatten(1).sum(1).float() + targets.flatten(1).sum(1).float()
            iou = torch.where(union > 0, overlap / union.clamp(min=1), 1.0)
            dice = torch.where(areas > 0, 2 * overlap / areas.clamp(min=1), 1.0)
            for k, row in enumerate(rows):
                row[f"{prefix}iou"] = float(iou[k])
                row[f"{prefix}dice"] = float(dice[k])
                row[f"{prefix}boundary_f1"] = boundary_f1(
                    masks[k].numpy(), targets[k].numpy(), tolerance
                )
            if kind == "box":
                image_of = batch.object_image_index.cpu()
                for position, index in enumerate(batch.image_indices):
                    run.box_masks[coco.images[index].id] = masks[image_of == position].numpy()
        run.instances.extend(rows)
    progress.close()
    run.seconds = time.perf_counter() - started
    return run


def summarize_run(run: PromptableRun, names: dict[int, str]) -> dict[str, Any]:
    """Overall and per-category means of one run."""

    def means(rows: list[dict[str, Any]]) -> dict[str, float]:
        values: dict[str, float] = {}
        for _, _, prefix in PROMPT_KINDS.values():
            for score in SCORES:
                key = f"{prefix}{'iou' if score == 'miou' else score}"
                values[f"{prefix}{score}"] = (
                    float(np.mean([r[key] for r in rows])) if rows else float("nan")
                )
        return values

    per_category = {}
    for category_id, name in names.items():
        rows = [r for r in run.instances if r["category_id"] == category_id]
        per_category[name] = {**means(rows), "instances": len(rows)}
    images = {r["image_id"] for r in run.instances}
    return {
        "source": run.source,
        "overall": {**means(run.instances), "instances": len(run.instances)},
        "per_category": per_category,
        "seconds": round(run.seconds, 2),
        "images_per_second": round(len(images) / max(run.seconds, 1e-9), 2),
    }


def evaluate_promptable(
    predictor: Any,
    coco: CocoDataset,
    *,
    compare_base: bool = False,
    base_predictor: Any | None = None,
    batch_size: int = 4,
    max_images: int | None = None,
) -> tuple[dict[str, Any], dict[str, PromptableRun]]:
    """Run a :class:`~sam3_lora.predict.promptable.SAM2LoRAInference` (and the base model)
    over ``coco``; returns ``(metrics, runs)``.

    With ``compare_base`` the base is ``base_predictor`` if given, else the predictor with its
    adapter switched off.
    """
    dataset = PromptDataset(coco, predictor.image_input, train=False, max_objects_per_image=None)
    if max_images is not None:
        dataset.indices = dataset.indices[:max_images]
    loaded = predictor.loaded
    primary = "adapter" if loaded.weights is not None else "base"
    common = {
        "batch_size": batch_size,
        "mask_threshold": predictor.mask_threshold,
        "device": predictor.device,
    }
    runs: dict[str, PromptableRun] = {}
    if compare_base and primary == "adapter":
        if base_predictor is not None:
            base_source = base_predictor.loaded.base_source
            runs["base"] = run_model(base_predictor.module, dataset, "base", base_source, **common)
        elif predictor.has_adapter:
            with predictor.adapter_disabled():
                runs["base"] = run_model(
                    predictor.module, dataset, "base", loaded.base_source, **common
                )
    source = loaded.base_source
    if primary == "adapter":
        source = f"{loaded.weights} ({loaded.kind} on {loaded.base_source})"
    runs[primary] = run_model(predictor.module, dataset, primary, source, **common)
    names = {c.id: c.name for c in coco.categories}
    metrics: dict[str, Any] = {
        "task": "promptable",
        "family": predictor.family,
        "dataset": str(coco.annotation_file),
        "num_images": len(dataset),
        "num_categories": len(coco.categories),
        "mask_threshold": predictor.mask_threshold,
        "resolution": predictor.image_input.resolution,
        "prompts": {
            "box": "the instance mask's box, no noise",
            "point": "one positive click at the mask's centre-most pixel",
            "points3": "that click and two corrective clicks at the centres of the errors",
        },
        "models": {name: summarize_run(run, names) for name, run in runs.items()},
    }
    if "base" in runs and "adapter" in runs:
        base = metrics["models"]["base"]["overall"]
        adapted = metrics["models"]["adapter"]["overall"]
        metrics["difference"] = {k: adapted[k] - base[k] for k in adapted if k != "instances"}
    metrics["metric_descriptions"] = {key: METRICS[key] for key in PROMPTABLE_METRICS}
    return metrics, runs


def write_instances(runs: dict[str, PromptableRun], coco: CocoDataset, file: Path) -> Path:
    """``instances.csv``: one row per instance and model, every score."""
    names = {c.id: c.name for c in coco.categories}
    files = {image.id: image.file_name for image in coco.images}
    keys = [f"{prefix}{s}" for _, _, prefix in PROMPT_KINDS.values() for s in ("iou", "dice")]
    keys += [f"{prefix}boundary_f1" for _, _, prefix in PROMPT_KINDS.values()]
    file.parent.mkdir(parents=True, exist_ok=True)
    with file.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "image", "annotation_id", "category", *keys])
        for name, run in runs.items():
            for row in run.instances:
                writer.writerow(
                    [
                        name,
                        files[row["image_id"]],
                        row["annotation_id"],
                        names[row["category_id"]],
                        *(f"{row[k]:.4f}" for k in keys),
                    ]
                )
    return file


def evaluate_promptable_from_config(
    config: Config,
    adapter_dir: str | Path | None,
    split: str = "valid",
    compare_base: bool = False,
    output_dir: str | Path | None = None,
    max_images: int | None = None,
    gallery_size: int = 8,
    console: Console | None = None,
) -> dict[str, Any]:
    """Evaluate ``adapter_dir`` (None: the base model) on ``data.<split>`` of a SAM2 /
    SAM3-tracker config; write ``metrics.json``, ``instances.csv``, ``report.md`` and
    ``report.html`` into ``output_dir`` (default ``<output.output_dir>/eval-<split>``)."""
    from sam3_lora.evaluation.promptable_report import comparison_tables, write_reports
    from sam3_lora.predict.promptable import SAM2LoRAInference
    from sam3_lora.tasks.promptable.data import open_promptable_split

    console = console or Console()
    coco = open_promptable_split(config, split)
    predictor = SAM2LoRAInference(config, weights_path=adapter_dir)
    base_predictor = None
    if compare_base and adapter_dir is not None and not predictor.has_adapter:
        base_predictor = SAM2LoRAInference(config)
    metrics, runs = evaluate_promptable(
        predictor,
        coco,
        compare_base=compare_base,
        base_predictor=base_predictor,
        batch_size=config.evaluation.batch_size,
        max_images=max_images,
    )
    metrics["split"] = split
    output = Path(output_dir) if output_dir else Path(config.output.output_dir) / f"eval-{split}"
    files = {"instances.csv": write_instances(runs, coco, output / "instances.csv")}
    files.update(write_reports(metrics, runs, coco, output, gallery_size))
    for table in comparison_tables(metrics):
        console.print(table)
    console.print(f"[green]reports[/green] written to {output} ({', '.join(sorted(files))})")
    metrics["output_dir"] = str(output)
    metrics["files"] = {name: str(path) for name, path in files.items()}
    return metrics
