"""LabelMe JSON -> COCO: polygons, rectangles, circles and masks; ``group_id`` merges parts.

Lines, line strips and points carry no area and are skipped with a warning; ``__ignore__`` and
``_background_`` shapes are not objects. An image is read from ``imagePath`` (relative to the
JSON, kept inside the input folder) or, when that is missing, from the embedded ``imageData``.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from sam3_lora.data.coco import decode_rle, segmentation_to_rle
from sam3_lora.data.convert.writer import CocoWriter, ConversionResult
from sam3_lora.data.images import is_image_file, resolve_in_dataset
from sam3_lora.data.jsonio import read_json
from sam3_lora.errors import DatasetError

logger = logging.getLogger(__name__)

IGNORED_LABELS = ("__ignore__", "_background_")
_NO_AREA = ("line", "linestrip", "point", "points")


def convert_labelme(
    input_dir: str | Path,
    output_dir: str | Path,
    split: str = "train",
    *,
    image_mode: str = "copy",
) -> ConversionResult:
    """Convert every LabelMe ``*.json`` under ``input_dir`` into ``output_dir/split``."""
    root = Path(input_dir)
    files = sorted(root.rglob("*.json")) if root.is_dir() else []
    if not files:
        raise DatasetError(f"no LabelMe *.json files found under {root}")
    writer = CocoWriter(output_dir, split, image_mode=image_mode)
    for path in tqdm(files, desc="labelme", unit="file", leave=False):
        record = read_json(path)
        if not isinstance(record, dict) or "shapes" not in record:
            writer.skip(f"{path} is not a LabelMe file (no 'shapes'); skipped")
            continue
        _convert_file(writer, root, path, record)
    return writer.write()


def _convert_file(writer: CocoWriter, root: Path, path: Path, record: dict[str, Any]) -> None:
    expected = (record.get("imageWidth"), record.get("imageHeight"))
    source, data = _image_source(root, path, record)
    name = source.name if source is not None else f"{path.stem}{_suffix_of(data)}"
    try:
        image_id = writer.add_image(
            source,
            data=data,
            file_name=name,
            expected_size=expected if all(isinstance(v, int) for v in expected) else None,
        )
    except DatasetError as error:
        raise DatasetError(f"{path}: {error}") from None
    width, height = writer.image_size(image_id)
    shapes = record["shapes"]
    if not isinstance(shapes, list):
        raise DatasetError(f"{path}: 'shapes' must be a list")
    groups: dict[tuple[str, Any], list[np.ndarray | list[float]]] = {}
    order: list[tuple[str, Any]] = []
    for number, shape in enumerate(shapes):
        where = f"{path}: shape #{number}"
        if not isinstance(shape, dict):
            raise DatasetError(f"{where} must be an object")
        label = str(shape.get("label", "")).strip()
        shape_type = shape.get("shape_type") or "polygon"
        if label in IGNORED_LABELS:
            continue
        if not label:
            raise DatasetError(f"{where} has an empty label; name it or delete it in LabelMe")
        if shape_type in _NO_AREA:
            writer.skip(f"{where} ({label!r}) is a {shape_type}, which has no area; skipped")
            continue
        part = _shape_region(shape, shape_type, where, width, height)
        group_id = shape.get("group_id")
        key = (label, group_id if group_id is not None else ("single", number))
        if key not in groups:
            order.append(key)
        groups.setdefault(key, []).append(part)
    for key in order:
        label = key[0]
        parts = groups[key]
        category_id = writer.category_id(label)
        if all(isinstance(part, list) for part in parts):
            writer.add_annotation(image_id, category_id, polygons=parts)  # type: ignore[arg-type]
            continue
        mask = np.zeros((height, width), dtype=bool)
        for part in parts:
            if isinstance(part, np.ndarray):
                mask |= part
            else:
                mask |= decode_rle(segmentation_to_rle([part], height, width))
        writer.add_annotation(image_id, category_id, mask=mask)


def _shape_region(
    shape: dict[str, Any], shape_type: str, where: str, width: int, height: int
) -> list[float] | np.ndarray:
    points = _points(shape.get("points"), where)
    if shape_type == "polygon":
        if len(points) < 3:
            raise DatasetError(
                f"{where}: polygon with {len(points)} points; a polygon needs at least 3"
            )
        return [v for point in points for v in point]
    if shape_type == "rectangle":
        _need(points, 2, where, shape_type)
        (x1, y1), (x2, y2) = points[0], points[1]
        x1, x2 = sorted((x1, x2))
        y1, y2 = sorted((y1, y2))
        return [x1, y1, x2, y1, x2, y2, x1, y2]
    if shape_type == "circle":
        _need(points, 2, where, shape_type)
        (cx, cy), (px, py) = points[0], points[1]
        radius = math.hypot(px - cx, py - cy)
        count = max(16, min(256, int(2 * math.pi * radius / 2)))
        return [
            v
            for k in range(count)
            for v in (
                cx + radius * math.cos(2 * math.pi * k / count),
                cy + radius * math.sin(2 * math.pi * k / count),
            )
        ]
    if shape_type == "mask":
        return _mask_shape(shape, points, where, width, height)
    raise DatasetError(f"{where}: unknown shape_type {shape_type!r}")


def _mask_shape(
    shape: dict[str, Any], points: list[tuple[float, float]], where: str, width: int, height: int
) -> np.ndarray:
    encoded = shape.get("mask")
    if not isinstance(encoded, str) or not points:
        raise DatasetError(f"{where}: a 'mask' shape needs 'points' and a base64 'mask' PNG")
    try:
        small = np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded)))) > 0
    except (binascii.Error, OSError, ValueError) as error:
        raise DatasetError(f"{where}: the embedded mask cannot be decoded ({error})") from None
    mask = np.zeros((height, width), dtype=bool)
    x0, y0 = round(points[0][0]), round(points[0][1])
    h, w = small.shape[:2]
    ys, xs = slice(max(y0, 0), min(y0 + h, height)), slice(max(x0, 0), min(x0 + w, width))
    mask[ys, xs] = small[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    return mask


def _image_source(
    root: Path, path: Path, record: dict[str, Any]
) -> tuple[Path | None, bytes | None]:
    image_path = record.get("imagePath")
    if isinstance(image_path, str) and image_path and is_image_file(Path(image_path)):
        relative = os.path.normpath(path.parent.relative_to(root) / image_path.replace("\\", "/"))
        try:
            candidate = resolve_in_dataset(root, relative)
        except DatasetError as error:
            raise DatasetError(f"{path}: imagePath {image_path!r}: {error}") from None
        if candidate.is_file():
            return candidate, None
    image_data = record.get("imageData")
    if image_data:
        try:
            return None, base64.b64decode(image_data, validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise DatasetError(f"{path}: 'imageData' is not valid base64") from None
    raise DatasetError(
        f"{path}: image {image_path!r} not found next to the JSON and no embedded imageData; "
        "put the image beside the JSON or re-save it in LabelMe with image data"
    )


def _points(value: Any, where: str) -> list[tuple[float, float]]:
    if not isinstance(value, list):
        raise DatasetError(f"{where}: 'points' must be a list of [x, y]")
    points = []
    for point in value:
        if (
            not isinstance(point, list | tuple)
            or len(point) != 2
            or not all(isinstance(v, int | float) and math.isfinite(v) for v in point)
        ):
            raise DatasetError(f"{where}: point {point!r} must be two finite numbers [x, y]")
        points.append((float(point[0]), float(point[1])))
    return points


def _need(points: list[tuple[float, float]], count: int, where: str, shape_type: str) -> None:
    if len(points) != count:
        raise DatasetError(f"{where}: a {shape_type} needs {count} points, got {len(points)}")


def _suffix_of(data: bytes | None) -> str:
    try:
        with Image.open(io.BytesIO(data or b"")) as image:
            return {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp"}.get(image.format or "", ".png")
    except OSError:
        return ".png"
