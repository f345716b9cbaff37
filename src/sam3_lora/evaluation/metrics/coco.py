"""COCO detection metrics (AP / AR) with pycocotools' ``COCOeval``, and COCO-format helpers.

Inputs are in memory: ``gt`` is a COCO dataset dict (``images``, ``annotations``, ``categories``)
and ``results`` a list in the COCO results format (``image_id``, ``category_id``, ``score`` and
``segmentation`` as RLE, ``counts`` as ``str`` or ``bytes``, and/or ``bbox`` as ``[x, y, w, h]``).
Neither is modified.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import pycocotools.mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sam3_lora.errors import DatasetError

logger = logging.getLogger(__name__)

IouType = Literal["segm", "bbox"]

#: Names of ``COCOeval.stats`` in order (maxDets 100 unless named).
COCO_STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR@1",
    "AR@10",
    "AR@100",
    "AR_small",
    "AR_medium",
    "AR_large",
)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Swallow pycocotools' prints."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def check_iou_type(iou_type: str) -> None:
    if iou_type not in ("segm", "bbox"):
        raise ValueError(f"iou_type must be 'segm' or 'bbox', got {iou_type!r}")


def segmentation_to_rle(
    segmentation: list | dict, height: int | None = None, width: int | None = None
) -> dict:
    """Turn a COCO ``segmentation`` (polygons, uncompressed or compressed RLE) into compressed RLE.

    ``height`` and ``width`` (the image size) are needed for polygons only.
    """
    if isinstance(segmentation, list):
        if height is None or width is None:
            raise DatasetError(
                "a polygon segmentation needs its image's height and width: add them to the "
                "image entry in 'images'"
            )
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation.get("counts"), list):
        h, w = segmentation["size"]
        return mask_utils.frPyObjects(segmentation, h, w)
    return segmentation


def image_sizes(gt: dict) -> dict[Any, tuple[int | None, int | None]]:
    """``image_id -> (height, width)`` from ``gt["images"]``."""
    return {img["id"]: (img.get("height"), img.get("width")) for img in gt.get("images", [])}


def annotation_rle(ann: dict, sizes: dict[Any, tuple[int | None, int | None]]) -> dict:
    """Compressed RLE of an annotation or result, with a message naming it if it has none."""
    if "segmentation" not in ann:
        raise DatasetError(
            f"annotation/result {_describe(ann)} has no 'segmentation' (needed for iou_type 'segm')"
        )
    return segmentation_to_rle(ann["segmentation"], *sizes.get(ann["image_id"], (None, None)))


def annotation_box(ann: dict, sizes: dict[Any, tuple[int | None, int | None]]) -> list[float]:
    """``[x, y, w, h]`` of an annotation or result; from its mask when it has no ``bbox``."""
    if "bbox" in ann:
        return [float(v) for v in ann["bbox"]]
    if "segmentation" in ann:
        return mask_utils.toBbox(annotation_rle(ann, sizes)).tolist()
    raise DatasetError(f"annotation/result {_describe(ann)} has neither 'bbox' nor 'segmentation'")


def _describe(ann: dict) -> str:
    return (
        f"(id={ann.get('id')}, image_id={ann.get('image_id')}, "
        f"category_id={ann.get('category_id')})"
    )


def _to_coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with quiet():
        coco.createIndex()
    return coco


def _prepare(anns: list[dict], iou_type: IouType, sizes: dict, is_result: bool) -> list[dict]:
    """Copies of ``anns`` with what COCOeval reads: nonzero ids, area, iscrowd, bbox or RLE."""
    prepared = []
    for i, ann in enumerate(anns):
        if ann.get("image_id") not in sizes:
            kind = "result" if is_result else "annotation"
            raise DatasetError(
                f"{kind} {_describe(ann)} refers to an image that is not in the ground truth's "
                "'images': evaluate predictions against the annotation file they were made for"
            )
        ann = dict(ann)
        if is_result:
            ann["iscrowd"] = 0
        else:
            ann.setdefault("iscrowd", 0)
        if iou_type == "segm":
            ann["segmentation"] = annotation_rle(ann, sizes)
            if is_result or "area" not in ann:
                ann["area"] = float(mask_utils.area(ann["segmentation"]))
        else:
            ann["bbox"] = annotation_box(ann, sizes)
            if is_result or "area" not in ann:
                ann["area"] = ann["bbox"][2] * ann["bbox"][3]
        ann["id"] = i + 1  # unique and nonzero: COCOeval reads id 0 as "unmatched"
        prepared.append(ann)
    return prepared


def coco_detection_metrics(
    gt: dict, results: list[dict], iou_type: IouType = "segm"
) -> dict[str, Any]:
    """COCO AP / AR of ``results`` against ``gt`` with pycocotools' ``COCOeval`` (stdout silenced).

    Args:
        gt: COCO dataset dict; annotations without ``area`` get the mask (segm) or box (bbox) area.
        results: COCO results; may be empty (all AP / AR are then 0 where ground truth exists).
            Results for categories not in ``gt["categories"]`` (negative prompts) are ignored.
            Result areas are recomputed from the mask (segm) or box (bbox) so that the
            small / medium / large ranges use the evaluated region.
        iou_type: ``"segm"`` (mask IoU) or ``"bbox"``.

    Returns:
        ``{name: value}`` for each name in :data:`COCO_STAT_NAMES`, values in [0, 1] and NaN where
        COCOeval reports -1 (no ground truth in that area range), plus ``"per_category_AP"``:
        ``{category_id: AP@[.50:.95]}`` (NaN for categories without ground truth).
    """
    check_iou_type(iou_type)
    sizes = image_sizes(gt)
    coco_gt = _to_coco(
        {
            "images": list(gt.get("images", [])),
            "categories": list(gt.get("categories", [])),
            "annotations": _prepare(gt.get("annotations", []), iou_type, sizes, is_result=False),
        }
    )
    coco_dt = _to_coco(
        {
            "images": coco_gt.dataset["images"],
            "categories": coco_gt.dataset["categories"],
            "annotations": _prepare(results, iou_type, sizes, is_result=True),
        }
    )
    evaluator = COCOeval(coco_gt, coco_dt, iou_type)
    with quiet():
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()

    metrics: dict[str, Any] = {
        name: float("nan") if value < 0 else float(value)
        for name, value in zip(COCO_STAT_NAMES, evaluator.stats, strict=True)
    }
    # precision: [iou thresholds, recall points, categories, area ranges ("all" first), maxDets]
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    per_category = {}
    for k, category_id in enumerate(evaluator.params.catIds):
        valid = precision[:, :, k][precision[:, :, k] > -1]
        if isinstance(category_id, np.generic):  # COCOeval turns the ids into numpy scalars
            category_id = category_id.item()
        per_category[category_id] = float(valid.mean()) if valid.size else float("nan")
    metrics["per_category_AP"] = per_category
    logger.debug("COCO %s metrics: %s", iou_type, metrics)
    return metrics
