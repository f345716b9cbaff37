"""The geometry checks of one annotation: polygons, RLE, box, area and crowd flag.

Each check reports into the split's report and returns the repaired record that ``--fix``
writes: boxes follow their masks, ``area`` is the segmentation's pixel count when the stored one
disagrees (COCO evaluation sizes objects by it), crowd regions are stored as RLE.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from pycocotools import mask as mask_utils

from sam3_lora.data.coco import (
    check_segmentation,
    polygon_problem,
    segmentation_box_xyxy,
    segmentation_to_rle,
)
from sam3_lora.errors import DatasetError

if TYPE_CHECKING:
    from sam3_lora.data.validate import SplitReport

BOX_TOLERANCE_PX = 1.0  # how far a box may leave the image or differ from its mask for free
AREA_TOLERANCE = 0.05  # relative difference of 'area' and the pixel count reported


def check_geometry(
    record: dict[str, Any], width: int, height: int, where: str, report: SplitReport
) -> dict[str, Any] | None:
    """Polygons, RLE and box of one annotation; returns the repaired record or None to drop it."""
    fixed = dict(record)
    segmentation = record.get("segmentation") or None
    if segmentation is None and record.get("bbox") is None:
        report.add("error", "no_geometry", where, "has neither 'bbox' nor 'segmentation'")
        return None
    if isinstance(segmentation, list):
        good = []
        for part, polygon in enumerate(segmentation):
            problem = polygon_problem(polygon)
            if problem:
                report.add("error", "bad_polygon", where, f"polygon {part} {problem}")
            else:
                good.append(polygon)
        segmentation = good or None
    elif segmentation is not None:
        try:
            check_segmentation(segmentation, height, width, where)
        except DatasetError as error:
            report.add("error", "bad_rle", where, str(error).split(": ", 1)[-1])
            segmentation = None
    fixed["segmentation"] = segmentation or []
    box = _box_xyxy(record.get("bbox"))
    if record.get("bbox") is not None and box is None:
        report.add(
            "error",
            "bad_box",
            where,
            f"bbox {record.get('bbox')!r} must be 4 finite "
            "numbers [x, y, width, height] with non-negative width and height",
        )
    mask_box = segmentation_box_xyxy(segmentation, height, width) if segmentation else None
    if mask_box is not None:
        mask_box = _clip(mask_box, width, height)
    if box is not None:
        if box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
            report.add("error", "zero_area_box", where, f"bbox {record['bbox']} has zero area")
            box = None
        elif box[2] <= 0 or box[3] <= 0 or box[0] >= width or box[1] >= height:
            report.add(
                "error",
                "box_outside_image",
                where,
                f"bbox {record['bbox']} lies outside the {width}x{height} image",
            )
            box = None
        elif (
            box[0] < -BOX_TOLERANCE_PX
            or box[1] < -BOX_TOLERANCE_PX
            or box[2] > width + BOX_TOLERANCE_PX
            or box[3] > height + BOX_TOLERANCE_PX
        ):
            report.add(
                "warning",
                "box_leaves_image",
                where,
                f"bbox {record['bbox']} extends past the {width}x{height} image (clipped)",
            )
    if box is not None and mask_box is not None:
        box = _compare_box_and_mask(_clip(box, width, height), mask_box, where, record, report)
    box = mask_box if box is None else _clip(box, width, height)
    if box is None or box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
        return None
    fixed["bbox"] = [
        round(float(box[0]), 2),
        round(float(box[1]), 2),
        round(float(box[2] - box[0]), 2),
        round(float(box[3] - box[1]), 2),
    ]
    if segmentation is not None:
        _check_area(record, fixed, segmentation, width, height, where, report)
    elif record.get("area") is not None and not _finite(record["area"]):
        report.add("error", "bad_area", where, f"area {record['area']!r} must be a finite number")
        fixed["area"] = fixed["bbox"][2] * fixed["bbox"][3]
    _check_crowd(record, fixed, width, height, where, report)
    return fixed


def _check_area(
    record: dict[str, Any],
    fixed: dict[str, Any],
    segmentation: Any,
    width: int,
    height: int,
    where: str,
    report: SplitReport,
) -> None:
    """``area`` against the segmentation's pixel count (rasterisation slack: half the outline)."""
    pixels = float(mask_utils.area(segmentation_to_rle(segmentation, height, width)))
    stored = record.get("area")
    if stored is None:
        fixed["area"] = pixels
        return
    if not _finite(stored):
        report.add(
            "error",
            "bad_area",
            where,
            f"area {stored!r} must be a finite number; the fix uses the segmentation's pixel count",
        )
        fixed["area"] = pixels
        return
    slack = max(AREA_TOLERANCE * pixels, 0.5 * _outline_length(segmentation), 1.0)
    if abs(stored - pixels) <= slack:
        return
    if pixels == 0:
        found = "its segmentation covers no pixel"
    else:
        found = f"its segmentation covers {pixels:.0f} px ({(stored - pixels) / pixels:+.0%})"
    bbox = record.get("bbox")
    box_area = bbox[2] * bbox[3] if _box_xyxy(bbox) is not None else None
    hint = ""
    if box_area and abs(stored - box_area) <= 0.01 * box_area + 1:
        hint = ": it is the box's area (w x h), as CVAT and Roboflow exports write it"
    report.add(
        "warning",
        "area_mismatch",
        where,
        f"area {stored:g} but {found}{hint}; COCO evaluation sorts objects into small / medium "
        "/ large by area, the fix uses the pixel count",
    )
    fixed["area"] = pixels


def _check_crowd(
    record: dict[str, Any], fixed: dict[str, Any], width: int, height: int, where: str,
    report: SplitReport,
) -> None:  # fmt: skip
    """``iscrowd`` is 0 or 1, and a crowd region is an RLE mask (COCO's convention)."""
    crowd = record.get("iscrowd", 0)
    if crowd not in (0, 1) or isinstance(crowd, float):
        report.add("error", "bad_iscrowd", where, f"iscrowd {crowd!r} must be 0 or 1")
        crowd = 1 if crowd in ("1", 1.0) else 0
        fixed["iscrowd"] = crowd
    if not crowd:
        return
    segmentation = fixed.get("segmentation")
    if isinstance(segmentation, dict):
        return
    if segmentation:
        rle = segmentation_to_rle(segmentation, height, width)
        what = "polygons; the fix converts them to RLE"
    else:
        x, y, w, h = fixed["bbox"]
        rle = mask_utils.frPyObjects(np.array([[x, y, w, h]], dtype=np.float64), height, width)[0]
        what = "only a box; the fix stores the box as an RLE mask"
    report.add(
        "error",
        "crowd_not_rle",
        where,
        f"iscrowd=1 needs an RLE segmentation (COCO crowd regions are RLE masks), it has {what}",
    )
    counts = rle["counts"]
    fixed["segmentation"] = {
        "size": [int(v) for v in rle["size"]],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def _outline_length(segmentation: Any) -> float:
    if not isinstance(segmentation, list):
        return 0.0
    total = 0.0
    for polygon in segmentation:
        points = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        closed = np.vstack([points, points[:1]])
        total += float(np.linalg.norm(np.diff(closed, axis=0), axis=1).sum())
    return total


def _compare_box_and_mask(
    box: np.ndarray, mask_box: np.ndarray, where: str, record: dict[str, Any], report: SplitReport
) -> np.ndarray | None:
    scale = np.array([mask_box[2] - mask_box[0], mask_box[3] - mask_box[1]] * 2)
    difference = np.abs(box - mask_box)
    if np.all(difference <= np.maximum(2.0, 0.05 * scale)):
        return box
    iou = _iou(box, mask_box)
    severity = "error" if iou < 0.5 else "warning"
    report.add(
        severity,
        "box_mask_mismatch",
        where,
        f"bbox {record['bbox']} disagrees with its mask's extent "
        f"{[round(float(v), 1) for v in mask_box]} (xyxy, IoU {iou:.2f}); the fix uses "
        "the mask's box",
    )
    return None


def _box_xyxy(bbox: Any) -> np.ndarray | None:
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        return None
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w < 0 or h < 0:
        return None
    return np.array([x, y, x + w, y + h])


def _clip(box: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.clip(box, 0, [width, height, width, height])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _finite(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
