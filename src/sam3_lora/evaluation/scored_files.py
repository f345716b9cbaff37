"""The files ``evaluate`` writes beside ``metrics.json`` so any COCO tool can re-score them:
the ground truth scored against and each model's COCO results."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sam3_lora.data.coco import CocoDataset, decode_rle
from sam3_lora.evaluation.vocabulary import METRICS

if TYPE_CHECKING:
    from sam3_lora.evaluation.runner import ModelRun


def ground_truth_dict(coco: CocoDataset) -> dict[str, Any]:
    """The split as a COCO dict for the metrics; box-only objects get their box as polygon."""
    annotations = []
    for index in range(len(coco)):
        for annotation in coco.raw_annotations(index):
            annotation = dict(annotation)
            if not annotation.get("segmentation"):
                x, y, w, h = annotation["bbox"]
                annotation["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
            annotations.append(annotation)
    return {
        "images": [
            {"id": i.id, "file_name": i.file_name, "width": i.width, "height": i.height}
            for i in coco.images
        ],
        "categories": [{"id": c.id, "name": c.name} for c in coco.categories],
        "annotations": annotations,
    }


#: The files ``evaluate`` scored, written beside ``metrics.json`` so any COCO tool can re-score.
GROUND_TRUTH_FILE = "ground_truth.coco.json"
PREDICTIONS_FILE = "predictions.coco.json"
BASE_PREDICTIONS_FILE = "predictions.base.coco.json"


def write_scored_files(
    metrics: dict[str, Any],
    runs: dict[str, ModelRun],
    coco: CocoDataset,
    output: Path,
    max_images: int | None = None,
) -> dict[str, Path]:
    """Write the ground truth scored against and each model's COCO results; name them (and
    the metric vocabulary) in ``metrics``.

    ``predictions.coco.json`` holds the evaluated model's results (the adapter's, or the base
    model's alone), ``predictions.base.coco.json`` the base model's when it was compared. Both
    are pycocotools ``loadRes`` lists (RLE masks, xywh boxes, score = detection x presence, at
    most 100 per image and prompt, score >= 0.01) over ``ground_truth.coco.json``: the split as
    scored (box-only objects carry their box as polygon; ``--max_images`` applied).
    """
    from sam3_lora.data.jsonio import write_json

    files = {
        GROUND_TRUTH_FILE: write_json(
            output / GROUND_TRUTH_FILE, scored_ground_truth(coco, max_images)
        )
    }
    predictions = {}
    for name, run in runs.items():
        file = PREDICTIONS_FILE if name != "base" or len(runs) == 1 else BASE_PREDICTIONS_FILE
        files[file] = write_json(output / file, run.results)
        predictions[name] = file
    metrics["ground_truth_file"] = GROUND_TRUTH_FILE
    metrics["source_annotations"] = str(coco.annotation_file)
    metrics["prediction_files"] = predictions
    metrics["metric_descriptions"] = dict(METRICS)
    return files


def scored_ground_truth(coco: CocoDataset, max_images: int | None = None) -> dict[str, Any]:
    """The ground truth the metrics use: :func:`ground_truth_dict` of the first ``max_images``."""
    gt = ground_truth_dict(coco)
    if max_images is not None:
        kept = {coco.images[i].id for i in range(min(max_images, len(coco)))}
        gt["images"] = [image for image in gt["images"] if image["id"] in kept]
        gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in kept]
    return gt


def decode_result(result: dict[str, Any]) -> np.ndarray:
    """The bool mask of a COCO result written by :func:`run_model`."""
    segmentation = result["segmentation"]
    return decode_rle({"size": segmentation["size"], "counts": segmentation["counts"].encode()})
