"""Label Studio exports (JSON and JSON-MIN) -> COCO: polygons, rectangles, ellipses, brushes.

* Coordinates are percent of ``original_width`` / ``original_height`` and are scaled to the local
  image; brush masks are at the original size and must match it.
* The image is the task's ``data.image`` (JSON) or ``image`` (JSON-MIN), a URL or an upload path
  such as ``/data/upload/4/8f3a2b1c-frame.jpg``; it is found under ``images_dir`` by name, with or
  without the upload prefix. An image that is not there is kept, sized from
  ``original_width`` / ``original_height``, with a warning (``skip_missing`` leaves it out).
* JSON-MIN groups regions by control name, so one region appears under each control that
  touched it (``magicwand`` and ``labels``): regions with the same geometry are merged, as are
  results sharing an ``id`` in the full JSON. A region with several labels is one object per label.
* Unrotated rectangles are box-only objects; rotated ones and ellipses become polygons.
* Brush masks use Label Studio's own bit-packed RLE of the RGBA image (not COCO RLE). It is
  decoded here: label-studio-converter / label-studio-sdk would add nltk, lxml and opencv for a
  30-line routine. The mask is the alpha channel, soft for MagicWand regions: binarised at
  ``mask_threshold``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np
from tqdm import tqdm

from sam3_lora.data.convert.shapes import (
    ImageIndex,
    check_polygon,
    ellipse_polygon,
    rotated_box_polygon,
    strip_upload_prefix,
)
from sam3_lora.data.convert.writer import CocoWriter, ConversionResult
from sam3_lora.data.jsonio import read_json
from sam3_lora.errors import DatasetError

logger = logging.getLogger(__name__)

TASK_KEYS = {"id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time"}


def convert_labelstudio(
    input_json: str | Path,
    images_dir: str | Path | None,
    output_dir: str | Path,
    split: str = "train",
    *,
    class_name: str = "object",
    mask_threshold: int = 128,
    skip_missing: bool = False,
    image_mode: str = "copy",
) -> ConversionResult:
    """Convert a Label Studio JSON or JSON-MIN export (see the module docstring).

    Args:
        images_dir: folder holding the task images (default: the JSON's folder).
        class_name: class of regions that carry no label.
        mask_threshold: alpha value from which a brush pixel is object (1-255).
    """
    path = Path(input_json)
    tasks = read_json(path)
    if isinstance(tasks, dict):
        tasks = [tasks]
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise DatasetError(
            f"{path} is not a Label Studio export: expected a list of tasks (export as JSON or "
            "JSON-MIN)"
        )
    if not 1 <= mask_threshold <= 255:
        raise DatasetError(f"mask threshold {mask_threshold} must be in 1..255")
    index = ImageIndex(images_dir if images_dir is not None else path.parent)
    writer = CocoWriter(output_dir, split, image_mode=image_mode)
    counts = {"unlabelled": 0, "extra": 0, "nolabel": 0, "noarea": 0, "empty": 0, "rescaled": 0}
    for position, task in enumerate(tqdm(tasks, desc="label studio", unit="task", leave=False)):
        where = f"{path}: task {task.get('id', f'#{position}')}"
        if not {"data", "annotations", "image", "annotation_id"} & set(task):
            raise DatasetError(
                f"{where} is not a Label Studio task (keys {sorted(task)[:8]}); export the "
                "project as JSON or JSON-MIN"
            )
        regions = _task_regions(task, where, counts)
        if regions is None:
            continue
        reference = _image_reference(task, where)
        source = index.find(reference, strip_prefix=True)
        sizes = {(r["width"], r["height"]) for r in regions if r["width"] and r["height"]}
        if len(sizes) > 1:
            raise DatasetError(f"{where}: regions disagree on the image size ({sorted(sizes)})")
        original = next(iter(sizes), None)
        if source is None:
            if skip_missing or original is None:
                writer.skip(f"{where}: image {reference!r} not found under {index.root}; skipped")
                continue
            image_id = writer.add_missing_image(
                strip_upload_prefix(Path(reference).name), *original
            )
        else:
            image_id = writer.add_image(source)
        size = writer.image_size(image_id)
        if original is not None and original != size:
            counts["rescaled"] += 1
        for number, region in enumerate(regions):
            here = f"{where}, region {region.get('id') or number}"
            _add_region(writer, image_id, region, here, size, original, class_name, mask_threshold)
            counts["nolabel"] += not region["labels"]
            counts["noarea"] += region["kind"] == "none"
    _summary_warnings(writer, counts, class_name)
    return writer.write()


def decode_brush_rle(rle: list[int], where: str) -> np.ndarray:
    """Label Studio's brush RLE -> the flat uint8 RGBA values it encodes (H * W * 4)."""
    try:
        data = bytes(int(v) for v in rle)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: brush 'rle' must be a list of bytes (0-255)") from None
    reader = _BitReader(data, where)
    total = reader.read(32)
    word_size = reader.read(5) + 1
    run_sizes = [reader.read(4) + 1 for _ in range(4)]
    values = np.zeros(total, dtype=np.uint8)
    position = 0
    while position < total:
        repeated = reader.read(1)
        end = min(total, position + 1 + reader.read(run_sizes[reader.read(2)]))
        if repeated:
            values[position:end] = reader.read(word_size)
        else:
            values[position:end] = [reader.read(word_size) for _ in range(end - position)]
        position = end
    return values


class _BitReader:
    def __init__(self, data: bytes, where: str):
        self.data, self.where, self.position = data, where, 0

    def read(self, size: int) -> int:
        start, end = self.position >> 3, (self.position + size + 7) >> 3
        if end > len(self.data):
            raise DatasetError(f"{self.where}: brush 'rle' ends early; re-export the task")
        chunk = int.from_bytes(self.data[start:end], "big")
        shift = (end - start) * 8 - (self.position & 7) - size
        self.position += size
        return (chunk >> shift) & ((1 << size) - 1)


def _task_regions(
    task: dict[str, Any], where: str, counts: dict[str, int]
) -> list[dict[str, Any]] | None:
    """The task's regions (merged across controls), or None when it was never labelled."""
    if "annotations" in task or "data" in task:
        usable = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        if not usable:
            counts["unlabelled"] += 1
            return None
        usable.sort(key=lambda a: not a.get("ground_truth"))
        counts["extra"] += len(usable) > 1
        results = usable[0].get("result") or []
        if not isinstance(results, list):
            raise DatasetError(f"{where}: annotation 'result' must be a list")
        raw = [r for r in results if isinstance(r, dict) and isinstance(r.get("value"), dict)]
        pieces = [
            (r.get("id"), dict(r["value"]), r.get("original_width"), r.get("original_height"))
            for r in raw
        ]
    else:
        if "annotation_id" not in task and not any(_is_region_list(v) for v in task.values()):
            counts["unlabelled"] += 1
            return None
        pieces = []
        for key, value in task.items():
            if key in TASK_KEYS or not _is_region_list(value):
                continue
            for item in value:
                pieces.append(
                    (None, dict(item), item.get("original_width"), item.get("original_height"))
                )
    merged: dict[str, dict[str, Any]] = {}
    for region_id, value, width, height in pieces:
        kind = _kind(value)
        key = str(region_id) if region_id else _geometry_key(value, kind)
        region = merged.setdefault(
            key,
            {
                "id": region_id,
                "kind": "none",
                "value": {},
                "labels": [],
                "width": None,
                "height": None,
            },
        )
        if kind != "none" and region["kind"] == "none":
            region.update(kind=kind, value=value)
        region["width"] = region["width"] or _number(width)
        region["height"] = region["height"] or _number(height)
        for label in _labels(value):
            if label not in region["labels"]:
                region["labels"].append(label)
    return [r for r in merged.values() if r["kind"] != "none" or r["labels"]]


def _add_region(
    writer: CocoWriter,
    image_id: int,
    region: dict[str, Any],
    where: str,
    size: tuple[int, int],
    original: tuple[int, int] | None,
    class_name: str,
    mask_threshold: int,
) -> None:
    kind, value = region["kind"], region["value"]
    width, height = size
    sx, sy = width / 100.0, height / 100.0
    geometry: dict[str, Any] = {}
    try:
        if kind == "polygon":
            points = value["points"]
            polygon = [float(v) for x, y in points for v in (x * sx, y * sy)]
            check_polygon(polygon, where)
            geometry["polygons"] = [polygon]
        elif kind == "rectangle":
            x, y, w, h = (float(value[k]) for k in ("x", "y", "width", "height"))
            rotation = float(value.get("rotation") or 0.0)
            if rotation:
                box = rotated_box_polygon(x * sx, y * sy, w * sx, h * sy, rotation, False)
                geometry["polygons"] = [box]
            else:
                geometry["bbox_xyxy"] = [x * sx, y * sy, (x + w) * sx, (y + h) * sy]
        elif kind == "ellipse":
            cx, cy = float(value["x"]) * sx, float(value["y"]) * sy
            rx, ry = float(value["radiusX"]) * sx, float(value["radiusY"]) * sy
            theta = math.radians(float(value.get("rotation") or 0.0))
            geometry["polygons"] = [ellipse_polygon(cx, cy, rx, ry, theta)]
        elif kind == "brush":
            if original is not None and original != size:
                raise DatasetError(
                    f"{where}: the brush mask is {original[0]}x{original[1]} but the image is "
                    f"{width}x{height}; use the image the task was labelled on"
                )
            rgba = decode_brush_rle(value["rle"], where)
            if rgba.size != width * height * 4:
                raise DatasetError(
                    f"{where}: brush RLE holds {rgba.size} values, expected {width}x{height}x4"
                )
            mask = rgba.reshape(height, width, 4)[:, :, 3] >= mask_threshold
            if not mask.any():
                writer.result.dropped += 1
                return
            geometry["mask"] = mask
        else:
            return
    except (KeyError, TypeError, ValueError) as error:
        raise DatasetError(f"{where}: malformed {kind} region ({error!r})") from None
    for label in region["labels"] or [class_name]:
        writer.add_annotation(image_id, writer.category_id(label), **geometry)


def _summary_warnings(writer: CocoWriter, counts: dict[str, int], class_name: str) -> None:
    if counts["unlabelled"]:
        writer.skip(
            f"{counts['unlabelled']} tasks have no annotation; left out", counts["unlabelled"]
        )
    if counts["extra"]:
        writer.warn(
            f"{counts['extra']} tasks have several annotations; the ground-truth one (else the "
            "first) is used"
        )
    if counts["nolabel"]:
        writer.warn(f"{counts['nolabel']} regions have no label; named {class_name!r}")
    if counts["noarea"]:
        message = f"{counts['noarea']} labelled regions have no area (keypoints, ...); left out"
        writer.skip(message, counts["noarea"])
    if counts["rescaled"]:
        writer.warn(
            f"{counts['rescaled']} images differ in size from original_width/original_height; "
            "percent coordinates were scaled to the local image"
        )


def _image_reference(task: dict[str, Any], where: str) -> str:
    data = task.get("data") if isinstance(task.get("data"), dict) else task
    value = data.get("image")
    if not isinstance(value, str):
        value = next(
            (v for k, v in data.items() if k not in TASK_KEYS and isinstance(v, str) and "." in v),
            None,
        )
    if not value:
        raise DatasetError(f"{where}: no image reference ('data.image'); is this an image task?")
    parsed = urlparse(value)
    local = parse_qs(parsed.query).get("d")  # local-files storage: /data/local-files/?d=dir/a.jpg
    return unquote(local[0] if local else parsed.path or value)


def _kind(value: dict[str, Any]) -> str:
    if "points" in value:
        return "polygon"
    if "rle" in value:
        return "brush"
    if "radiusX" in value:
        return "ellipse"
    if {"x", "y", "width", "height"} <= set(value):
        return "rectangle"
    return "none"


def _labels(value: dict[str, Any]) -> list[str]:
    found: list[str] = []
    for key, labels in value.items():
        if key.endswith("labels") and isinstance(labels, list):
            found += [str(label).strip() for label in labels if str(label).strip()]
    return found


def _geometry_key(value: dict[str, Any], kind: str) -> str:
    fields = {
        "polygon": ("points",),
        "brush": ("rle",),
        "ellipse": ("x", "y", "radiusX", "radiusY", "rotation"),
        "rectangle": ("x", "y", "width", "height", "rotation"),
        "none": tuple(sorted(value)),
    }[kind]
    return json.dumps([kind] + [value.get(k) for k in fields], default=str)


def _is_region_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _number(value: Any) -> int | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return int(value)
    return None
