"""CVAT for images 1.1 XML (task, job and project exports) -> COCO.

* ``<polygon>`` and ``<ellipse>`` become polygons, unrotated ``<box>`` a box-only object (rotated:
  a polygon, turned about its centre as CVAT does), ``<mask>`` a mask: CVAT's RLE is a list of
  run lengths, background first, row by row inside the mask's ``left``/``top``/``width``/
  ``height`` box. Polylines, points, tags and skeletons carry no area and are counted as skipped.
* Project exports hold several subsets (``<image subset="Train">``): each subset is written to
  its split (``Train`` -> ``train``, ``Validation`` -> ``valid``) unless ``subset`` picks one.
* Images are found under ``images_dir`` by their ``name`` (which may hold folders) or base name;
  an image that is not there is kept, sized from the XML, with a warning (``skip_missing``
  leaves it out). ``occluded`` and ``<attribute>`` values are kept in ``attributes``.

Written on the standard library's ElementTree: the format is small and fixed, and no kept
library reads it into COCO without also pulling in a dataset framework (datumaro).
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sam3_lora.data.convert.shapes import (
    ImageIndex,
    check_polygon,
    ellipse_polygon,
    rotated_box_polygon,
)
from sam3_lora.data.convert.writer import CocoWriter, ConversionResult, normalize_split
from sam3_lora.errors import DatasetError

logger = logging.getLogger(__name__)

NO_AREA = ("polyline", "points", "tag", "skeleton", "cuboid")
AREA_SHAPES = ("polygon", "box", "ellipse", "mask")


def convert_cvat(
    annotations_xml: str | Path,
    images_dir: str | Path | None,
    output_dir: str | Path,
    split: str | None = None,
    *,
    subset: str | None = None,
    skip_missing: bool = False,
    image_mode: str = "copy",
) -> list[ConversionResult]:
    """Convert a CVAT for images 1.1 export; one result per split written.

    Args:
        images_dir: folder holding the images (default: ``images/`` beside the XML, else its
            folder).
        split: output split for every image; default: each subset's own (``train`` when the
            export has only the ``default`` subset).
        subset: convert only the images of this subset (project exports).
    """
    path = Path(annotations_xml)
    root = _parse(path)
    if root.find("track") is not None:
        raise DatasetError(
            f"{path} holds <track> elements: it is a 'CVAT for video' export; export the task as "
            "'CVAT for images 1.1' instead"
        )
    images = root.findall("image")
    declared = _declared_labels(root)
    subsets = sorted({image.get("subset") or "default" for image in images})
    if subset is not None:
        if subset not in subsets:
            raise DatasetError(f"{path} has no subset {subset!r} (subsets: {subsets})")
        images = [i for i in images if (i.get("subset") or "default") == subset]
    elif split is not None and len(subsets) > 1:
        raise DatasetError(
            f"{path} holds the subsets {subsets}; pass --subset NAME to convert one of them into "
            f"--split {split}, or leave out --split to write each subset to its own split"
        )
    if images_dir is None:
        images_dir = path.parent / "images" if (path.parent / "images").is_dir() else path.parent
    index = ImageIndex(images_dir)
    writers: dict[str, CocoWriter] = {}
    no_area: dict[str, dict[str, int]] = {}
    for image in tqdm(images, desc="cvat", unit="img", leave=False):
        target = split or _split_of(image.get("subset"))
        writer = writers.get(target)
        if writer is None:
            writer = writers[target] = CocoWriter(output_dir, target, image_mode=image_mode)
            for label in declared:
                writer.category_id(label)
        _convert_image(writer, image, path, index, skip_missing, no_area.setdefault(target, {}))
    for target, writer in writers.items():
        for kind, count in sorted(no_area[target].items()):
            writer.skip(f"{path}: {count} <{kind}> shapes have no area; left out", count)
    return [writer.write() for writer in writers.values()]


def decode_cvat_mask(
    rle_text: str, left: int, top: int, width: int, height: int, size: tuple[int, int], where: str
) -> np.ndarray:
    """CVAT's mask RLE (runs inside its box, background first, row-major) -> a full-image mask."""
    try:
        runs = [int(v) for v in rle_text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise DatasetError(f"{where}: mask 'rle' must be comma-separated integers") from None
    if any(v < 0 for v in runs) or sum(runs) != width * height:
        raise DatasetError(
            f"{where}: mask RLE covers {sum(runs)} pixels but its box is {width}x{height} "
            f"(= {width * height}); the export is damaged, re-export it"
        )
    flat = np.repeat(np.arange(len(runs)) % 2 == 1, runs)
    image_width, image_height = size
    mask = np.zeros((image_height, image_width), dtype=bool)
    box = flat.reshape(height, width)
    x2, y2 = min(left + width, image_width), min(top + height, image_height)
    if left < 0 or top < 0 or x2 <= left or y2 <= top:
        raise DatasetError(f"{where}: mask box {left},{top} {width}x{height} is outside the image")
    mask[top:y2, left:x2] = box[: y2 - top, : x2 - left]
    return mask


def _convert_image(
    writer: CocoWriter,
    image: ET.Element,
    path: Path,
    index: ImageIndex,
    skip_missing: bool,
    no_area: dict[str, int],
) -> None:
    name = image.get("name") or ""
    where = f"{path}: image id {image.get('id')} {name!r}"
    if not name:
        raise DatasetError(f"{where} has no 'name'")
    width, height = (
        _int(image.get("width"), where, "width"),
        _int(image.get("height"), where, "height"),
    )
    source = index.find(name)
    if source is None:
        if skip_missing:
            writer.skip(f"{where}: not found under {index.root}; skipped")
            return
        image_id = writer.add_missing_image(Path(name.replace("\\", "/")).name, width, height)
    else:
        try:
            image_id = writer.add_image(source, expected_size=(width, height))
        except DatasetError as error:
            raise DatasetError(f"{where}: {error}") from None
    for number, shape in enumerate(image):
        if shape.tag in NO_AREA:
            no_area[shape.tag] = no_area.get(shape.tag, 0) + 1
            continue
        if shape.tag not in AREA_SHAPES:
            continue
        here = f"{where}, <{shape.tag}> #{number}"
        label = (shape.get("label") or "").strip()
        if not label:
            raise DatasetError(f"{here} has no label")
        geometry = _geometry(shape, here, (width, height))
        attributes = {a.get("name"): (a.text or "").strip() for a in shape.findall("attribute")}
        attributes["occluded"] = shape.get("occluded") == "1"
        writer.add_annotation(
            image_id, writer.category_id(label), extra={"attributes": attributes}, **geometry
        )


def _geometry(shape: ET.Element, where: str, size: tuple[int, int]) -> dict[str, Any]:
    tag = shape.tag
    if tag == "polygon":
        polygon = _points(shape.get("points"), where)
        check_polygon(polygon, where)
        return {"polygons": [polygon]}
    if tag == "box":
        x1, y1, x2, y2 = (_float(shape.get(k), where, k) for k in ("xtl", "ytl", "xbr", "ybr"))
        if x2 <= x1 or y2 <= y1:
            raise DatasetError(f"{where}: box {x1},{y1}-{x2},{y2} has no area")
        rotation = _float(shape.get("rotation") or "0", where, "rotation")
        if rotation:
            return {"polygons": [rotated_box_polygon(x1, y1, x2 - x1, y2 - y1, rotation, True)]}
        return {"bbox_xyxy": [x1, y1, x2, y2]}
    if tag == "ellipse":
        cx, cy, rx, ry = (_float(shape.get(k), where, k) for k in ("cx", "cy", "rx", "ry"))
        theta = math.radians(_float(shape.get("rotation") or "0", where, "rotation"))
        return {"polygons": [ellipse_polygon(cx, cy, rx, ry, theta)]}
    left, top, width, height = (
        _int(shape.get(k), where, k) for k in ("left", "top", "width", "height")
    )
    mask = decode_cvat_mask(shape.get("rle") or "", left, top, width, height, size, where)
    if not mask.any():
        raise DatasetError(f"{where}: the mask is empty; delete the shape in CVAT")
    return {"mask": mask}


def _parse(path: Path) -> ET.Element:
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise DatasetError(f"annotation file {path} does not exist") from None
    except ET.ParseError as error:
        raise DatasetError(f"{path} is not valid XML ({error}); re-export it") from None
    if root.tag != "annotations":
        raise DatasetError(
            f"{path}: root element <{root.tag}>, expected <annotations> (CVAT for images 1.1)"
        )
    version = (root.findtext("version") or "").strip()
    if version and version != "1.1":
        logger.warning("%s: CVAT format version %s; read as 1.1", path, version)
    return root


def _declared_labels(root: ET.Element) -> list[str]:
    names = []
    for label in root.iter("label"):
        name = (label.findtext("name") or "").strip()
        if name and name not in names:
            names.append(name)
    return names


def _split_of(subset: str | None) -> str:
    if not subset or subset.strip().lower() == "default":
        return "train"
    return normalize_split(subset)


def _points(text: str | None, where: str) -> list[float]:
    polygon: list[float] = []
    for pair in (text or "").strip().split(";"):
        if not pair.strip():
            continue
        try:
            x, y = (float(v) for v in pair.split(","))
        except ValueError:
            raise DatasetError(f"{where}: point {pair!r} is not 'x,y'") from None
        polygon += [x, y]
    return polygon


def _float(text: str | None, where: str, key: str) -> float:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: '{key}' = {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DatasetError(f"{where}: '{key}' = {text!r} is not finite")
    return value


def _int(text: str | None, where: str, key: str) -> int:
    value = _float(text, where, key)
    if not value.is_integer():
        raise DatasetError(f"{where}: '{key}' = {text!r} is not a whole number")
    return int(value)
