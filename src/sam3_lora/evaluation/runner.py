"""Evaluate SAM3 (base, adapted, or both) on a COCO split.

Every category is prompted on every image (absent ones too), as in Meta's evaluation; each image
also gets ``negative_prompts`` concepts from the hard-negative vocabulary that are not dataset
categories. Predictions become COCO results (RLE masks, xywh boxes, score = detection x
presence) and are scored with :mod:`sam3_lora.evaluation.metrics`:

- COCO AP / AR (pycocotools) for ``segm`` and ``bbox``, over all results with score >= 0.01;
- SAM3's cgF1 (positive micro F1 x IL_MCC) at IoU 0.50:0.95, 0.5 and 0.75, predictions with
  score >= the threshold;
- mask mIoU and Dice per (image, category) pair with ground truth: the union of the predictions
  above the threshold against the union of the ground truth;
- prompt following: the share of negative prompts (and of absent categories) on which the model
  predicts anything above the threshold;
- gIoU (generalized referring segmentation, gRefCOCO): the mean IoU over every prompt, a prompt
  without ground truth scoring 1 when nothing passes the threshold and 0 otherwise;
- a score-threshold sweep (0.1 ... 0.9) of the thresholded metrics, and the threshold with the
  best cgF1: the operating point to pass to ``predict --threshold``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from tqdm.auto import tqdm

from sam3_lora.config import Config
from sam3_lora.data.coco import CocoDataset
from sam3_lora.data.sources import open_config_split
from sam3_lora.data.vocabulary import category_texts, exclude_overlapping, load_negative_vocabulary
from sam3_lora.evaluation.metrics import union_iou_dice
from sam3_lora.evaluation.scored_files import (
    BASE_PREDICTIONS_FILE,
    GROUND_TRUTH_FILE,
    PREDICTIONS_FILE,
    decode_result,
    ground_truth_dict,
    scored_ground_truth,
    write_scored_files,
)
from sam3_lora.evaluation.scores import CGF1_KEYS, COCO_KEYS, compute_metrics, threshold_sweep
from sam3_lora.predict.inference import ConceptPrompt, PromptPrediction, SAM3LoRAInference

logger = logging.getLogger(__name__)

MIN_RESULT_SCORE = 0.01  # results kept for COCO AP (thresholded metrics use the threshold)
MAX_DETECTIONS = 100  # per (image, prompt), COCO's maxDets
#: Score thresholds of the sweep; the configured threshold is added when it is not among them.
SWEEP_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class ModelRun:
    """Everything one model produced on the split."""

    name: str
    source: str
    results: list[dict[str, Any]] = field(default_factory=list)
    pairs: list[dict[str, Any]] = field(default_factory=list)  # per (image, category)
    negative_scores: list[float] = field(default_factory=list)  # best score per negative prompt
    sweep_thresholds: tuple[float, ...] = SWEEP_THRESHOLDS
    image_scores: dict[int, float] = field(default_factory=dict)  # image_id -> mean pair IoU
    seconds: float = 0.0
    # (image_id, concept) -> results above the threshold of a retention prompt, best first
    answers: dict[tuple[int, str], list[dict[str, Any]]] = field(default_factory=dict)


def choose_negatives(vocabulary: list[str], count: int, index: int) -> list[str]:
    """A fixed, spread-out choice of ``count`` concepts for image ``index`` (comparable runs)."""
    count = min(count, len(vocabulary))
    start = (index * count) % max(len(vocabulary), 1)
    return [vocabulary[(start + k) % len(vocabulary)] for k in range(count)]


def _gt_masks(coco: CocoDataset, index: int) -> dict[int, np.ndarray]:
    """Non-crowd ground-truth masks per category id, ``[N, H, W]`` bool."""
    image = coco.images[index]
    per_category: dict[int, list[np.ndarray]] = {c.id: [] for c in coco.categories}
    for instance in coco.instances(index):
        if instance.iscrowd:
            continue
        mask = instance.mask
        if mask is None:
            x0, y0, x1, y1 = (round(float(v)) for v in instance.box_xyxy)
            mask = np.zeros((image.height, image.width), dtype=bool)
            mask[max(y0, 0) : y1, max(x0, 0) : x1] = True
        per_category[instance.category_id].append(mask)
    empty = np.zeros((0, image.height, image.width), dtype=bool)
    return {k: np.stack(v) if v else empty for k, v in per_category.items()}


def run_model(
    predictor: SAM3LoRAInference,
    coco: CocoDataset,
    name: str,
    negatives: list[list[str]],
    threshold: float,
    batch_size: int,
    indices: list[int],
    retention: dict[int, list[str]] | None = None,
    categories: bool = True,
) -> ModelRun:
    """Prompt every category (and the negatives, and the retention concepts) on every image of
    ``indices``, in batches; ``categories=False`` prompts the retention concepts only."""
    from sam3_lora.predict.autolabel import encode_mask

    sweep = tuple(sorted({*SWEEP_THRESHOLDS, threshold}))
    run = ModelRun(name=name, source=_describe(predictor, name), sweep_thresholds=sweep)
    started = time.perf_counter()
    prompted = list(coco.categories) if categories else []
    category_prompts = [ConceptPrompt(c.prompt) for c in prompted]
    retention = retention or {}
    progress = tqdm(total=len(indices), desc=f"evaluating {name}", unit="img", leave=False)
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        images = [coco.load_image(i) for i in chunk]
        prompts = [
            category_prompts
            + [ConceptPrompt(text) for text in (*negatives.get(i, []), *retention.get(i, []))]
            for i in chunk
        ]
        found = predictor.predict_prompts(
            images, prompts, threshold=MIN_RESULT_SCORE, max_detections=MAX_DETECTIONS
        )
        for index, per_prompt in zip(chunk, found, strict=True):
            image_id = coco.images[index].id
            gt = _gt_masks(coco, index) if categories else {}
            ious = []
            for category, prediction in zip(prompted, per_prompt, strict=False):
                for mask, box, score in zip(
                    prediction.masks, prediction.boxes, prediction.scores, strict=True
                ):
                    x1, y1, x2, y2 = (float(v) for v in box)
                    run.results.append(
                        {
                            "image_id": image_id,
                            "category_id": category.id,
                            "segmentation": encode_mask(mask),
                            "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": float(score),
                        }
                    )
                swept = _sweep_iou_dice(prediction, gt[category.id], sweep)
                iou, dice = swept[sweep.index(threshold)]
                best_score = _best_score(prediction)
                ious.append(iou)
                run.pairs.append(
                    {
                        "image_id": image_id,
                        "category_id": category.id,
                        "has_gt": len(gt[category.id]) > 0,
                        "fires": best_score >= threshold,
                        "iou": iou,
                        "dice": dice,
                        "best_score": best_score,
                        "sweep_iou": [v[0] for v in swept],
                        "sweep_dice": [v[1] for v in swept],
                    }
                )
            asked = len(prompted) + len(negatives.get(index, []))
            for prediction in per_prompt[len(prompted) : asked]:
                run.negative_scores.append(_best_score(prediction))
            for prediction in per_prompt[asked:]:
                run.answers[(image_id, prediction.prompt.text)] = [
                    {"segmentation": encode_mask(m), "bbox": _xywh(b), "score": float(s)}
                    for m, b, s in zip(
                        prediction.masks, prediction.boxes, prediction.scores, strict=True
                    )
                    if s >= threshold
                ]
            if categories:
                run.image_scores[image_id] = float(np.mean(ious)) if ious else 1.0
        progress.update(len(chunk))
    progress.close()
    run.seconds = time.perf_counter() - started
    return run


def run_sharded(
    predictor: SAM3LoRAInference,
    coco: CocoDataset,
    name: str,
    negatives: dict[int, list[str]],
    threshold: float,
    batch_size: int,
    indices: list[int],
    retention: dict[int, list[str]] | None = None,
    categories: bool = True,
) -> ModelRun:
    """:func:`run_model`, split between the processes of a distributed launch (every N-th image
    from each rank) and gathered in image order on every process: N processes give exactly the
    run of one."""
    from accelerate import PartialState

    state = PartialState()
    options = {"retention": retention, "categories": categories}
    if state.num_processes == 1:
        return run_model(
            predictor, coco, name, negatives, threshold, batch_size, indices, **options
        )
    from accelerate.utils import gather_object

    mine = indices[state.process_index :: state.num_processes]
    parts = gather_object(
        [run_model(predictor, coco, name, negatives, threshold, batch_size, mine, **options)]
    )
    position = {coco.images[i].id: k for k, i in enumerate(indices)}
    merged = ModelRun(
        name=name,
        source=parts[0].source,
        sweep_thresholds=parts[0].sweep_thresholds,
        seconds=max(part.seconds for part in parts),
    )
    for part in parts:
        merged.results.extend(part.results)
        merged.pairs.extend(part.pairs)
        merged.image_scores.update(part.image_scores)
        merged.answers.update(part.answers)
    merged.results.sort(key=lambda r: position[r["image_id"]])  # stable: per image as one runs
    merged.pairs.sort(key=lambda p: position[p["image_id"]])
    merged.image_scores = dict(sorted(merged.image_scores.items(), key=lambda kv: position[kv[0]]))
    by_image: dict[int, list[float]] = {}
    for rank, part in enumerate(parts):
        scores = iter(part.negative_scores)
        for index in indices[rank :: state.num_processes]:
            by_image[index] = [next(scores) for _ in negatives.get(index, [])]
    merged.negative_scores = [score for index in indices for score in by_image[index]]
    return merged


def _sweep_iou_dice(
    prediction: PromptPrediction, gt_masks: np.ndarray, thresholds: tuple[float, ...]
) -> list[tuple[float, float]]:
    """Union IoU and Dice at each threshold; thresholds that keep the same masks share one."""
    by_kept: dict[tuple[bool, ...], tuple[float, float]] = {}
    values = []
    for threshold in thresholds:
        keep = prediction.scores >= threshold
        key = tuple(bool(k) for k in keep)
        if key not in by_kept:
            by_kept[key] = union_iou_dice(prediction.masks[keep], gt_masks)
        values.append(by_kept[key])
    return values


def _xywh(box: np.ndarray) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def _best_score(prediction: PromptPrediction) -> float:
    """The prompt's highest score; -inf without predictions, so it fires at no threshold."""
    return float(prediction.scores.max()) if len(prediction.scores) else float("-inf")


def _describe(predictor: SAM3LoRAInference, name: str) -> str:
    loaded = predictor.loaded
    if name == "base" or loaded.weights is None:
        return loaded.base_source
    return f"{loaded.weights} ({loaded.kind} on {loaded.base_source})"


def evaluate_dataset(
    predictor: SAM3LoRAInference,
    coco: CocoDataset,
    *,
    compare_base: bool = False,
    negative_prompts: int = 5,
    vocabulary: list[str] | None = None,
    threshold: float = 0.5,
    batch_size: int = 4,
    max_images: int | None = None,
    base_predictor: SAM3LoRAInference | None = None,
    merge_adapter: bool = True,
    config: Config | None = None,
) -> tuple[dict[str, Any], dict[str, ModelRun]]:
    """Run the predictor (and the base model) over ``coco``; returns ``(metrics, runs)``.

    With ``compare_base``, the base is ``base_predictor`` if given, else the predictor with its
    adapter switched off. With ``merge_adapter`` an adapter is then merged into the weights in
    memory before its own run when that is exact (:meth:`SAM3LoRAInference.merge_adapter`):
    the same predictions, without the adapter's extra matrix products. With a ``config`` whose
    ``evaluation.verify_negatives`` is on, the base model first checks each image's candidate
    negatives (:mod:`sam3_lora.evaluation.retention`): those it finds are not negatives but
    retention prompts (``evaluation.retention_prompts`` per image), and an adapter's retention
    is reported.
    """
    from sam3_lora.evaluation.retention import add_retention, base_of, plan_prompts

    vocabulary, _ = exclude_overlapping(
        vocabulary or load_negative_vocabulary(), category_texts(coco.categories)
    )
    indices = list(range(len(coco)))[:max_images]
    primary = "adapter" if predictor.loaded.weights is not None else "base"
    check, negatives, retention = plan_prompts(
        config, predictor, base_predictor, coco, vocabulary, indices, negative_prompts
    )
    runs: dict[str, ModelRun] = {}
    base, context = base_of(predictor, base_predictor) if primary == "adapter" else (None, None)
    if base is not None and (compare_base or retention):
        with context:
            if compare_base:
                runs["base"] = run_sharded(
                    base, coco, "base", negatives, threshold, batch_size, indices, retention
                )
            else:  # the base model's answers to the retention prompts only
                runs["base-retention"] = run_sharded(
                    base, coco, "base", {}, threshold, batch_size, list(retention), retention, False
                )
    merged = merge_adapter and predictor.merge_adapter()
    runs[primary] = run_sharded(
        predictor, coco, primary, negatives, threshold, batch_size, indices, retention
    )
    gt = scored_ground_truth(coco, max_images)
    names = {c.id: c.name for c in coco.categories}
    metrics: dict[str, Any] = {
        "dataset": str(coco.annotation_file),
        "num_images": len(indices),
        "num_categories": len(coco.categories),
        "negative_prompts_per_image": min(negative_prompts, len(vocabulary)),
        "score_threshold": threshold,
        "mask_threshold": predictor.mask_threshold,
        "adapter_merged_in_memory": bool(merged),
        "models": {
            name: compute_metrics(gt, run, threshold, names)
            for name, run in runs.items()
            if name != "base-retention"
        },
    }
    add_retention(metrics, runs, coco, check, retention)
    if "base" in metrics["models"] and "adapter" in metrics["models"]:
        base_overall, adapted = (
            metrics["models"]["base"]["overall"],
            metrics["models"]["adapter"]["overall"],
        )
        metrics["difference"] = {k: adapted[k] - base_overall[k] for k in adapted}
    return metrics, runs


def evaluate_from_config(
    config: Config,
    adapter_dir: str | Path | None,
    split: str = "valid",
    compare_base: bool = False,
    output_dir: str | Path | None = None,
    negative_prompts: int | None = None,
    max_images: int | None = None,
    gallery_size: int = 8,
    console: Console | None = None,
) -> dict[str, Any]:
    """Evaluate ``adapter_dir`` (None: the base model) on ``data.<split>`` of ``config``.

    Writes ``metrics.json``, ``report.md`` and ``report.html`` into ``output_dir`` (default
    ``<output.output_dir>/eval-<split>``), prints the summary tables, and returns the metrics
    (with ``"output_dir"`` and ``"files"`` added).

    Args:
        negative_prompts: absent concepts prompted per image (default
            ``evaluation.num_negative_prompts``); the vocabulary is ``data.negative_prompts``.
        max_images: evaluate the first N images only (quick checks).
    """
    from accelerate import PartialState

    from sam3_lora.evaluation.report import comparison_tables, render_gallery, write_reports
    from sam3_lora.evaluation.retention import render_retention_gallery

    state = PartialState()  # a distributed launch splits the images (see run_sharded)
    device = state.device if state.num_processes > 1 else None
    console = console or Console()
    evaluation = config.evaluation
    coco = open_config_split(config, split)
    predictor = SAM3LoRAInference(
        config,
        weights_path=adapter_dir,
        device=device,
        threshold=evaluation.score_threshold,
        mask_threshold=evaluation.mask_threshold,
        batch_size=evaluation.batch_size,
    )
    base_predictor = None
    needs_base = compare_base or evaluation.verify_negatives  # verification and retention
    if needs_base and adapter_dir is not None and not predictor.has_adapter:
        base_predictor = SAM3LoRAInference(config, device=device, batch_size=evaluation.batch_size)
    metrics, runs = evaluate_dataset(
        predictor,
        coco,
        compare_base=compare_base,
        negative_prompts=(
            evaluation.num_negative_prompts if negative_prompts is None else negative_prompts
        ),
        vocabulary=load_negative_vocabulary(config.data.negative_prompts),
        threshold=evaluation.score_threshold,
        batch_size=evaluation.batch_size,
        max_images=max_images,
        base_predictor=base_predictor,
        config=config,
    )
    metrics["split"] = split
    output = Path(output_dir) if output_dir else Path(config.output.output_dir) / f"eval-{split}"
    metrics["output_dir"] = str(output)
    if not state.is_main_process:  # every process has the gathered metrics; one writes
        return metrics
    scored_runs = {name: run for name, run in runs.items() if name != "base-retention"}
    scored = write_scored_files(metrics, scored_runs, coco, output, max_images)
    gallery = render_gallery(coco, scored_runs, evaluation.score_threshold, gallery_size)
    lost = []
    if "retention" in metrics:
        lost = render_retention_gallery(coco, runs, metrics["retention"], gallery_size)
    files = {**scored, **write_reports(metrics, gallery, output, lost)}
    for table in comparison_tables(metrics):
        console.print(table)
    console.print(f"[green]reports[/green] written to {output} ({', '.join(sorted(files))})")
    metrics["files"] = {name: str(path) for name, path in files.items()}
    return metrics


__all__ = [
    "BASE_PREDICTIONS_FILE",
    "CGF1_KEYS",
    "COCO_KEYS",
    "GROUND_TRUTH_FILE",
    "PREDICTIONS_FILE",
    "ModelRun",
    "choose_negatives",
    "compute_metrics",
    "decode_result",
    "evaluate_dataset",
    "evaluate_from_config",
    "ground_truth_dict",
    "run_model",
    "run_sharded",
    "scored_ground_truth",
    "threshold_sweep",
    "write_scored_files",
]
