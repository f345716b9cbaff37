"""``evaluate``'s verified negatives and retention report.

Before the models run, the base model checks each evaluation image's candidate negatives
(:func:`verify_for_evaluation`, the pass and cache of training): a concept it finds there is not
prompted as a negative (the adapter is not blamed for seeing it) but as a *retention prompt*.
Both models answer the retention prompts; :func:`retention_report` then says how much of what
the base found the adapter still finds (:mod:`sam3_lora.evaluation.metrics.retention`), per
concept, and on which images the adapter lost most.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np
from pycocotools import mask as mask_utils

from sam3_lora.evaluation.metrics.retention import count_kept, summarize_retention

if TYPE_CHECKING:
    from sam3_lora.config import Config
    from sam3_lora.data.coco import CocoDataset
    from sam3_lora.data.negative_cache import NegativeCheck
    from sam3_lora.evaluation.report_page import GalleryItem
    from sam3_lora.evaluation.runner import ModelRun
    from sam3_lora.predict.inference import SAM3LoRAInference

#: Per-concept rows shown in the console and the reports.
CONCEPT_ROWS = 12


def base_of(
    predictor: SAM3LoRAInference, base_predictor: SAM3LoRAInference | None
) -> tuple[SAM3LoRAInference | None, Any]:
    """The predictor that answers as the base model, and the context to run it in."""
    if base_predictor is not None:
        return base_predictor, nullcontext()
    if predictor.has_adapter:
        return predictor, predictor.adapter_disabled()
    if predictor.loaded.weights is None:
        return predictor, nullcontext()
    return None, nullcontext()


def verify_for_evaluation(
    config: Config,
    predictor: SAM3LoRAInference,
    base_predictor: SAM3LoRAInference | None,
    coco: CocoDataset,
    vocabulary: list[str],
    indices: list[int],
) -> NegativeCheck | None:
    """The base model's check of the images ``indices`` (cached with training's); None when
    no base model is at hand."""
    from sam3_lora.tasks.concept.negatives import verify_negatives

    base, context = base_of(predictor, base_predictor)
    if base is None or not vocabulary:
        return None
    data = config.data
    resolution = data.resolution or int(base.model.config.vision_config.image_size)
    with context:
        return verify_negatives(
            coco,
            base.predictor.model,
            vocabulary,
            resolution=resolution,
            pool_size=data.negative_verify_pool,
            seed=config.training.seed,
            threshold=data.negative_verify_threshold,
            batch_size=config.evaluation.batch_size,
            model_name=base.loaded.base_source,
            timeout_s=config.training.distributed_timeout_s,
            device=base.device,
            indices=indices,
        )


def plan_prompts(
    config: Config | None,
    predictor: SAM3LoRAInference,
    base_predictor: SAM3LoRAInference | None,
    coco: CocoDataset,
    vocabulary: list[str],
    indices: list[int],
    count: int,
) -> tuple[NegativeCheck | None, dict[int, list[str]], dict[int, list[str]]]:
    """The base model's check (``evaluation.verify_negatives``), each image's ``count``
    negatives (among its verified candidates when checked) and, for an adapter, its retention
    prompts (the concepts the base found there)."""
    from sam3_lora.evaluation.runner import choose_negatives

    check = None
    if config is not None and config.evaluation.verify_negatives and count:
        check = verify_for_evaluation(config, predictor, base_predictor, coco, vocabulary, indices)
    if check is None:
        return None, {i: choose_negatives(vocabulary, count, i) for i in indices}, {}
    ids = {i: coco.images[i].id for i in indices}
    negatives = {i: choose_negatives(check.negatives(ids[i]), count, i) for i in indices}
    adapter = predictor.loaded.weights is not None
    retained = config.evaluation.retention_prompts if adapter else 0
    retention = {i: check.present(ids[i])[:retained] for i in indices} if retained else {}
    return check, negatives, {i: concepts for i, concepts in retention.items() if concepts}


def add_retention(
    metrics: dict[str, Any],
    runs: dict[str, ModelRun],
    coco: CocoDataset,
    check: NegativeCheck | None,
    retention: dict[int, list[str]],
) -> None:
    """Put the verification summary and the adapter's retention into ``metrics``."""
    if check is not None:
        metrics["negative_verification"] = verification_block(check)
    base = runs.get("base") or runs.get("base-retention")
    if not retention or base is None or "adapter" not in runs:
        return
    report = retention_report(base, runs["adapter"], coco, retention)
    metrics["retention"] = report
    for name, block in metrics["models"].items():
        for key in ("retention", "retention_iou"):
            block["overall"][key] = report[key] if name == "adapter" else float("nan")


def _as_rle(result: dict[str, Any]) -> dict[str, Any]:
    segmentation = result["segmentation"]
    return {"size": segmentation["size"], "counts": segmentation["counts"].encode()}


def _pair_retention(base: list[dict], adapted: list[dict]) -> tuple[int, int, float]:
    """(base detections, kept, union IoU) of one (image, concept): answers best first;
    detections with an empty mask have nothing to keep and are left out."""
    base_rles, adapted_rles = (
        [rle for rle in (_as_rle(r) for r in answers) if mask_utils.area(rle) > 0]
        for answers in (base, adapted)
    )
    if not base_rles:
        return 0, 0, 1.0 if not adapted_rles else 0.0
    if not adapted_rles:
        return len(base_rles), 0, 0.0
    iou = np.asarray(mask_utils.iou(base_rles, adapted_rles, [0] * len(adapted_rles)))
    unions = [mask_utils.merge(rles, intersect=False) for rles in (base_rles, adapted_rles)]
    union_iou = float(np.asarray(mask_utils.iou(unions[:1], unions[1:], [0])).reshape(-1)[0])
    return len(base_rles), count_kept(iou.reshape(len(base_rles), len(adapted_rles))), union_iou


def retention_report(
    base: ModelRun,
    adapted: ModelRun,
    coco: CocoDataset,
    concepts: dict[int, list[str]],
    worst: int = 8,
) -> dict[str, Any]:
    """Retention over the retention prompts ``concepts`` (image index -> concepts), overall,
    per concept and per image (the images where the adapter lost most first)."""
    pairs, by_concept = [], defaultdict(list)
    by_image: dict[int, list[tuple[int, int, float]]] = defaultdict(list)
    for index, image_concepts in concepts.items():
        image_id = coco.images[index].id
        for concept in image_concepts:
            pair = _pair_retention(
                base.answers.get((image_id, concept), []),
                adapted.answers.get((image_id, concept), []),
            )
            pairs.append(pair)
            by_concept[concept].append(pair)
            by_image[image_id].append(pair)
    report = summarize_retention(pairs)
    per_concept = {c: summarize_retention(p) for c, p in by_concept.items()}
    report["per_concept"] = dict(
        sorted(per_concept.items(), key=lambda kv: (-kv[1]["retention_detections"], kv[0]))
    )
    images = []
    for image_id, image_pairs in by_image.items():
        lost = sum(b - k for b, k, _ in image_pairs)
        iou = float(np.mean([iou for b, _, iou in image_pairs if b] or [1.0]))
        images.append({"image_id": image_id, "lost": lost, "retention_iou": iou})
    images.sort(key=lambda row: (-row["lost"], row["retention_iou"]))
    report["worst_images"] = [row for row in images if row["lost"] or row["retention_iou"] < 1][
        :worst
    ]
    return report


def concept_rows(report: dict[str, Any], limit: int = CONCEPT_ROWS) -> tuple[list[str], list]:
    """Header and rows of the per-concept retention table."""
    header = ["concept", "base detections", "retention", "retention_iou"]
    rows = []
    for concept, values in list(report.get("per_concept", {}).items())[:limit]:
        rows.append(
            [
                concept,
                str(int(values["retention_detections"])),
                f"{values['retention']:.3f}",
                f"{values['retention_iou']:.3f}",
            ]
        )
    return header, rows


def render_retention_gallery(
    coco: CocoDataset, runs: dict[str, ModelRun], report: dict[str, Any], size: int = 8
) -> list[GalleryItem]:
    """The images where the adapter lost most of the base's detections: base and adapter
    answers on the retention prompts, side by side."""
    from sam3_lora.evaluation.report_page import GalleryItem
    from sam3_lora.evaluation.scored_files import decode_result
    from sam3_lora.predict.visualize import draw_predictions, side_by_side

    if "base" not in runs and "base-retention" not in runs:
        return []
    base = runs.get("base") or runs["base-retention"]
    adapted = runs["adapter"]
    items = []
    for row in report.get("worst_images", [])[:size]:
        image_id = row["image_id"]
        index = coco.index_of_image(image_id)
        image = coco.load_image(index)
        panels = []
        for title, run in (("base", base), ("adapter", adapted)):
            answers = [
                (concept, result)
                for (answer_image, concept), results in run.answers.items()
                if answer_image == image_id
                for result in results
            ]
            boxes = [[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for _, r in answers)]
            masks = np.stack([decode_result(r) for _, r in answers]) if answers else []
            labels = [concept for concept, _ in answers]
            scores = [r["score"] for _, r in answers]
            panels.append((title, draw_predictions(image, masks, boxes, labels, scores)))
        title = (
            f"{coco.images[index].file_name}: the adapter lost {row['lost']} of the base's "
            f"detections (IoU {row['retention_iou']:.2f})"
        )
        items.append(GalleryItem(title, side_by_side(panels)))
    return items


def retention_title(metrics: dict[str, Any]) -> str:
    """The retention headline: share kept, of how many, and the mask IoU."""
    retention = metrics.get("retention", {})
    return (
        f"retention: base detections on concepts outside the dataset kept by the adapter "
        f"({_fmt(retention.get('retention', float('nan')))} of "
        f"{int(retention.get('retention_detections', 0))}; mask IoU "
        f"{_fmt(retention.get('retention_iou', float('nan')))})"
    )


def retention_html(
    metrics: dict[str, Any],
    table: tuple[list[str], list[list[str]]],
    gallery: list[GalleryItem],
) -> str:
    """The HTML report's retention section: headline, per-concept table, lost images."""
    import html

    from sam3_lora.evaluation.report_page import gallery_figures, html_table

    return (
        f"<h2>Retention</h2><p>{html.escape(retention_title(metrics))}</p>{html_table(*table)}"
        "<h3>Where the adapter lost most of what the base model found</h3>"
        + (gallery_figures(gallery) or "<p>the adapter lost nothing</p>")
    )


def _fmt(value: float) -> str:
    return "n/a" if value != value else f"{value:.3f}"


def verification_block(check: NegativeCheck, top: int = 10) -> dict[str, Any]:
    """What ``metrics.json`` says about the negative verification of the evaluated images."""
    presence = check.presence()
    candidates = sum(len(v) for v in check.scores.values())
    return {
        "threshold": check.threshold,
        "candidates": candidates,
        "dropped": sum(n for _, n in presence.values()),
        "cache_file": str(check.cache_file) if check.cache_file else None,
        "most_present": {
            concept: {"images_checked": n, "images_present": k, "share": k / n}
            for concept, (n, k) in list(presence.items())[:top]
            if k
        },
        "summary": check.summary(),
    }
