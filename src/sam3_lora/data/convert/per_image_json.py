"""SAM3-LoRA per-image JSON -> COCO.

One JSON per image: ``{"bboxes": [[x1, y1, x2, y2], ...], "masks": [[[x, y], ...], ...],
"labels": ["cat", ...]}`` (``masks`` and ``labels`` optional; ``masks[i]`` belongs to
``bboxes[i]``). Layouts: ``images/a.jpg`` + ``annotations/a.json``, or both in one folder.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sam3_lora.data.convert.writer import CocoWriter, ConversionResult
from sam3_lora.data.images import is_image_file
from sam3_lora.data.jsonio import read_json
from sam3_lora.errors import DatasetError

logger = logging.getLogger(__name__)


def convert_per_image_json(
    input_dir: str | Path,
    output_dir: str | Path,
    split: str = "train",
    *,
    class_name: str = "object",
    image_mode: str = "copy",
) -> ConversionResult:
    """Convert a folder of per-image JSON files; objects without a label get ``class_name``."""
    root = Path(input_dir)
    if not root.is_dir():
        raise DatasetError(f"input folder {root} does not exist")
    images = {p.stem: p for p in sorted(root.rglob("*")) if p.is_file() and is_image_file(p)}
    annotations = sorted(root.rglob("*.json"))
    if not annotations:
        raise DatasetError(f"no per-image *.json files under {root}")
    writer = CocoWriter(output_dir, split, image_mode=image_mode)
    for path in tqdm(annotations, desc="json", unit="img", leave=False):
        image = images.get(path.stem)
        if image is None:
            writer.skip(f"{path}: no image named {path.stem}.* under {root}; skipped")
            continue
        record = read_json(path)
        if not isinstance(record, dict) or not ({"bboxes", "masks"} & set(record)):
            raise DatasetError(f"{path}: expected an object with 'bboxes' and/or 'masks'")
        image_id = writer.add_image(image)
        _add_objects(writer, image_id, record, path, class_name)
    if writer.result.box_only:
        writer.warn(f"{writer.result.box_only} objects have a box but no mask")
    return writer.write()


def _add_objects(
    writer: CocoWriter, image_id: int, record: dict[str, Any], path: Path, class_name: str
) -> None:
    boxes = record.get("bboxes") or []
    masks = record.get("masks") or []
    labels = record.get("labels") or []
    for key, value in (("bboxes", boxes), ("masks", masks), ("labels", labels)):
        if not isinstance(value, list):
            raise DatasetError(f"{path}: '{key}' must be a list")
    if boxes and masks and len(boxes) != len(masks):
        raise DatasetError(
            f"{path}: {len(boxes)} bboxes but {len(masks)} masks; masks[i] must belong to "
            "bboxes[i] (use null for a box without mask)"
        )
    count = max(len(boxes), len(masks))
    if labels and len(labels) != count:
        raise DatasetError(f"{path}: {len(labels)} labels for {count} objects")
    for index in range(count):
        where = f"{path}: object {index}"
        box = _box(boxes[index], where) if boxes else None
        polygon = _polygon(masks[index], where) if masks else None
        label = str(labels[index]) if labels else class_name
        if box is None and polygon is None:
            raise DatasetError(f"{where} has neither a box nor a mask")
        writer.add_annotation(
            image_id,
            writer.category_id(label),
            polygons=[polygon] if polygon else None,
            bbox_xyxy=box,
        )


def _box(value: Any, where: str) -> list[float] | None:
    if value is None:
        return None
    if not (isinstance(value, list) and len(value) == 4 and all(_finite(v) for v in value)):
        raise DatasetError(f"{where}: bbox {value!r} must be [x1, y1, x2, y2] finite numbers")
    x1, y1, x2, y2 = (float(v) for v in value)
    if x2 <= x1 or y2 <= y1:
        raise DatasetError(
            f"{where}: bbox {value!r} has x2 <= x1 or y2 <= y1; the format is [x1, y1, x2, y2]"
        )
    return [x1, y1, x2, y2]


def _polygon(value: Any, where: str) -> list[float] | None:
    if value is None or value == []:
        return None
    if not isinstance(value, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(_finite(v) for v in p) for p in value
    ):
        raise DatasetError(f"{where}: mask must be a list of [x, y] points with finite numbers")
    if len(value) < 3:
        raise DatasetError(f"{where}: mask polygon has {len(value)} points; at least 3 needed")
    return [float(v) for point in value for v in point]


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
