"""VGG Image Annotator (VIA 1.x / 2.x JSON) -> COCO: polygons, rectangles, circles, ellipses.

Regions are a dict (VIA 1.x) or a list (VIA 2.x); entries are keyed by ``filename`` or
``filename + size`` and matched to files by ``filename`` only.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sam3_lora.data.convert.shapes import ellipse_polygon
from sam3_lora.data.convert.writer import CocoWriter, ConversionResult
from sam3_lora.data.images import resolve_in_dataset
from sam3_lora.data.jsonio import read_json
from sam3_lora.errors import DatasetError

logger = logging.getLogger(__name__)


def convert_via(
    via_json: str | Path,
    images_dir: str | Path | None,
    output_dir: str | Path,
    split: str = "train",
    *,
    class_attribute: str | None = None,
    class_name: str = "object",
    image_mode: str = "copy",
    skip_missing: bool = False,
) -> ConversionResult:
    """Convert a VIA project / region file; the class comes from ``region_attributes``.

    Args:
        class_attribute: region attribute holding the class (default: the first string one).
        class_name: class of regions without one (VIA files often have none).
        skip_missing: leave out images that are not found instead of stopping.
    """
    via_json = Path(via_json)
    images_root = Path(images_dir) if images_dir is not None else via_json.parent
    data = read_json(via_json)
    if isinstance(data, dict) and "_via_img_metadata" in data:
        data = data["_via_img_metadata"]
    if not isinstance(data, dict) or not all(
        isinstance(v, dict) and "filename" in v for v in data.values()
    ):
        raise DatasetError(f"{via_json} is not a VIA annotation file (entries need 'filename')")
    writer = CocoWriter(output_dir, split, image_mode=image_mode)
    for key, entry in tqdm(data.items(), desc="via", unit="img", leave=False):
        where = f"{via_json}: entry {key!r}"
        image_path = resolve_in_dataset(images_root, str(entry["filename"]))
        if not image_path.is_file():
            message = f"{where}: image {image_path} not found"
            if not skip_missing:
                raise DatasetError(f"{message}; pass --images_dir or --skip_missing")
            writer.skip(message)
            continue
        image_id = writer.add_image(image_path)
        regions = entry.get("regions") or []
        if isinstance(regions, dict):
            regions = [regions[k] for k in sorted(regions, key=_numeric_key)]
        for number, region in enumerate(regions):
            _add_region(
                writer, image_id, region, f"{where}, region {number}", class_attribute, class_name
            )
    return writer.write()


def _add_region(
    writer: CocoWriter,
    image_id: int,
    region: Any,
    where: str,
    class_attribute: str | None,
    class_name: str,
) -> None:
    shape = region.get("shape_attributes") if isinstance(region, dict) else None
    if not isinstance(shape, dict):
        raise DatasetError(f"{where}: missing 'shape_attributes'")
    label = _label(region.get("region_attributes") or {}, class_attribute) or class_name
    name = shape.get("name")
    try:
        if name == "polygon":
            xs, ys = shape["all_points_x"], shape["all_points_y"]
            if len(xs) != len(ys) or len(xs) < 3:
                raise DatasetError(f"{where}: polygon needs >= 3 points and as many x as y")
            polygon = [float(v) for xy in zip(xs, ys, strict=True) for v in xy]
        elif name == "rect":
            x, y, w, h = (float(shape[k]) for k in ("x", "y", "width", "height"))
            polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
        elif name in ("circle", "ellipse"):
            cx, cy = float(shape["cx"]), float(shape["cy"])
            rx = float(shape.get("r", shape.get("rx", 0)))
            ry = float(shape.get("r", shape.get("ry", 0)))
            theta = float(shape.get("theta", 0.0))
            polygon = ellipse_polygon(cx, cy, rx, ry, theta)
        else:
            writer.skip(f"{where}: shape {name!r} has no area; skipped")
            return
    except (KeyError, TypeError, ValueError) as error:
        raise DatasetError(f"{where}: malformed {name} shape ({error!r})") from None
    if not all(math.isfinite(v) for v in polygon):
        raise DatasetError(f"{where}: NaN or infinite coordinate")
    writer.add_annotation(image_id, writer.category_id(label), polygons=[polygon])


def _label(attributes: dict[str, Any], class_attribute: str | None) -> str | None:
    if class_attribute is not None:
        value = attributes.get(class_attribute)
    else:
        value = next((v for v in attributes.values() if isinstance(v, str) and v.strip()), None)
    if isinstance(value, dict):  # VIA 2 checkbox attributes: {"cat": true}
        value = next((k for k, v in value.items() if v), None)
    return str(value).strip() if value else None


def _numeric_key(key: str) -> tuple[int, str]:
    return (int(key), "") if str(key).isdigit() else (1 << 30, str(key))
