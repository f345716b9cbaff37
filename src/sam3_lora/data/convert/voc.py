"""Pascal VOC segmentation (``SegmentationObject`` / ``SegmentationClass`` PNGs) -> COCO.

* The PNGs are palette images: Pillow reads their pixel indices (not colours). 255 is the
  boundary / void band and belongs to no object; 0 is background. Masks re-saved as RGB are mapped
  back through the VOC colour map.
* With object masks, each object id is one instance (possibly in several parts), classed by the
  majority of the class mask at its pixels, or by the ``<object>`` order of ``Annotations/*.xml``
  when there is no class mask. With class masks only, instances are the connected parts of each
  class. Components under ``min_area`` pixels are dropped and counted.
* Class names: ``classes`` (index = pixel value), else a ``class_names.txt`` / ``labels.txt``
  beside the masks, else the 21 VOC names (with readable prompts for ``diningtable`` & co.).
* ``voc_dir`` may be the VOC folder itself or a folder above it (``VOCdevkit/VOC2012``).
  ``image_set`` picks ``ImageSets/Segmentation/<name>.txt``; by default the list named like the
  split (``train.txt``, ``val.txt``) when it exists, else every image with a mask. Images with
  only box annotations are left out unless ``boxes`` adds their boxes (box-only objects).
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sam3_lora.data.convert import mask_cleanup as cleanup
from sam3_lora.data.convert.masks import (
    MaskOptions,
    label_values,
    load_class_names,
    report_fixes,
)
from sam3_lora.data.convert.writer import CocoWriter, ConversionResult, normalize_split
from sam3_lora.data.images import is_image_file, read_image_size
from sam3_lora.errors import DatasetError

logger = logging.getLogger(__name__)

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
VOC_PROMPTS = {"diningtable": "dining table", "pottedplant": "potted plant", "tvmonitor": "tv"}
MASK_FOLDERS = ("SegmentationObject", "SegmentationClass")
VOID = 255
_IMAGE_SET_NAMES = {"valid": "val"}


def voc_colour_map(count: int = 256) -> list[tuple[int, int, int]]:
    """The PASCAL VOC palette: index -> (r, g, b) (255 is (224, 224, 192))."""
    colours = []
    for index in range(count):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        colours.append((r, g, b))
    return colours


def convert_voc(
    voc_dir: str | Path,
    output_dir: str | Path,
    split: str = "train",
    *,
    classes: list[str] | None = None,
    image_set: str | None = None,
    boxes: bool = False,
    min_area: int | None = None,
    image_mode: str = "copy",
) -> ConversionResult:
    """Convert a VOC segmentation folder into ``output_dir/split`` (see the module docstring)."""
    root = find_voc_root(Path(voc_dir))
    names, prompts = _class_names(root, classes)
    stems = _image_stems(root, split, image_set)
    images = {p.stem: p for p in _files(root / "JPEGImages") if is_image_file(p)}
    options = MaskOptions(
        mask_type="instance", colours=voc_colour_map(), ignore_value=VOID, min_area=min_area
    )
    writer = CocoWriter(output_dir, split, image_mode=image_mode)
    for name in names[1:]:
        writer.category_id(name, prompts.get(name))
    box_only: list[str] = []
    for stem in tqdm(stems, desc="voc", unit="img", leave=False):
        masks = {
            f: root / f / f"{stem}.png"
            for f in MASK_FOLDERS
            if (root / f / f"{stem}.png").is_file()
        }
        xml = root / "Annotations" / f"{stem}.xml"
        if not masks and not (boxes and xml.is_file()):
            box_only.append(stem)
            continue
        image_id = _add_image(writer, images.get(stem), stem, masks)
        if not masks:
            _add_boxes(writer, image_id, xml, names, prompts)
            continue
        _add_masks(writer, image_id, masks, xml, names, prompts, options)
    if box_only:
        shown = ", ".join(box_only[:3]) + (" ..." if len(box_only) > 3 else "")
        writer.skip(
            f"{root}: {len(box_only)} images have no mask ({shown}); left out (pass --boxes to "
            "add their box annotations)",
            len(box_only),
        )
    return writer.write()


def find_voc_root(folder: Path) -> Path:
    """``folder`` or the one folder below it that holds ``SegmentationObject`` / ``...Class``."""
    if not folder.is_dir():
        raise DatasetError(f"VOC folder {folder} does not exist")
    if any((folder / name).is_dir() for name in MASK_FOLDERS):
        return folder
    found = sorted({p.parent for name in MASK_FOLDERS for p in folder.rglob(name) if p.is_dir()})
    if len(found) == 1:
        return found[0]
    if not found:
        raise DatasetError(
            f"no SegmentationObject/ or SegmentationClass/ folder under {folder}; is it a "
            "Pascal VOC segmentation export?"
        )
    shown = ", ".join(str(p) for p in found[:4])
    raise DatasetError(f"{folder} holds several VOC folders ({shown}); pass one as --voc_dir")


def _add_masks(
    writer: CocoWriter,
    image_id: int,
    masks: dict[str, Path],
    xml: Path,
    names: list[str],
    prompts: dict[str, str],
    options: MaskOptions,
) -> None:
    size = writer.image_size(image_id)
    fixes = cleanup.MaskFixes(next(iter(masks.values())), min_area=options.floor(*size))
    classes = None
    if "SegmentationClass" in masks:
        classes = label_values(masks["SegmentationClass"], options, size, fixes)
    if "SegmentationObject" not in masks:
        for value in _values(classes):  # type: ignore[arg-type]
            category = writer.category_id(_name(value, names), prompts.get(_name(value, names)))
            parts = cleanup.drop_small_components(classes == value, fixes.min_area, fixes)
            for part, _ in parts:
                writer.add_annotation(image_id, category, mask=part)
        report_fixes(writer, fixes)
        return
    objects = label_values(masks["SegmentationObject"], options, size, fixes)
    order = _xml_objects(xml) if classes is None else []
    for value in _values(objects):
        mask = cleanup.remove_small_parts(objects == value, fixes.min_area, fixes)
        if not mask.any():
            continue
        if classes is not None:
            inside = classes[mask]
            inside = inside[(inside > 0) & (inside != VOID)]
            if inside.size == 0:
                fixes.notes.append(f"object {value} has no class pixels; left out")
                continue
            name = _name(int(np.bincount(inside).argmax()), names)
        elif value <= len(order):
            name = order[value - 1][0]
        else:
            raise DatasetError(
                f"{masks['SegmentationObject']}: object {value} has no class mask and no "
                f"<object> #{value} in {xml}; add the SegmentationClass PNG"
            )
        writer.add_annotation(image_id, writer.category_id(name, prompts.get(name)), mask=mask)
    report_fixes(writer, fixes)


def _add_boxes(
    writer: CocoWriter, image_id: int, xml: Path, names: list[str], prompts: dict[str, str]
) -> None:
    for name, box in _xml_objects(xml):
        writer.add_annotation(image_id, writer.category_id(name, prompts.get(name)), bbox_xyxy=box)


def _add_image(writer: CocoWriter, image: Path | None, stem: str, masks: dict[str, Path]) -> int:
    if image is not None:
        return writer.add_image(image)
    if not masks:
        raise DatasetError(f"image {stem} is not in JPEGImages/; it has box annotations only")
    width, height = read_image_size(next(iter(masks.values())))
    return writer.add_missing_image(f"{stem}.jpg", width, height)


def _xml_objects(xml: Path) -> list[tuple[str, list[float]]]:
    """(name, [x1, y1, x2, y2]) per ``<object>``, boxes turned 0-based (VOC's are 1-based)."""
    if not xml.is_file():
        return []
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError as error:
        raise DatasetError(f"{xml} is not valid XML ({error})") from None
    objects = []
    for number, item in enumerate(root.findall("object"), start=1):
        name = (item.findtext("name") or "").strip()
        box = item.find("bndbox")
        if not name or box is None:
            raise DatasetError(f"{xml}: <object> #{number} needs <name> and <bndbox>")
        try:
            x1, y1, x2, y2 = (
                float(box.findtext(k) or "") for k in ("xmin", "ymin", "xmax", "ymax")
            )
        except ValueError:
            raise DatasetError(
                f"{xml}: <object> #{number} ({name}): <bndbox> needs numbers"
            ) from None
        objects.append((name, [x1 - 1, y1 - 1, x2, y2]))
    return objects


def _class_names(root: Path, classes: list[str] | None) -> tuple[list[str], dict[str, str]]:
    if classes:
        return list(classes), {}
    for candidate in (root / "class_names.txt", root / "labels.txt"):
        if candidate.is_file():
            return load_class_names(candidate)[0], {}
    return list(VOC_CLASSES), dict(VOC_PROMPTS)


def _image_stems(root: Path, split: str, image_set: str | None) -> list[str]:
    lists = root / "ImageSets" / "Segmentation"
    name = image_set or _IMAGE_SET_NAMES.get(normalize_split(split), normalize_split(split))
    listed = lists / f"{name}.txt"
    if image_set is not None and image_set != "all" and not listed.is_file():
        raise DatasetError(f"image set {listed} does not exist")
    if image_set != "all" and listed.is_file():
        stems = [line.split()[0] for line in listed.read_text().splitlines() if line.strip()]
        logger.info("%s: %d images listed in %s", root, len(stems), listed)
        return stems
    found = {p.stem for f in MASK_FOLDERS for p in _files(root / f) if p.suffix.lower() == ".png"}
    found |= {p.stem for p in _files(root / "Annotations") if p.suffix.lower() == ".xml"}
    if not found:
        raise DatasetError(f"{root}: no masks or annotations found")
    return sorted(found)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def _values(values: np.ndarray) -> list[int]:
    return [int(v) for v in np.unique(values) if v not in (0, VOID, cleanup.UNMATCHED)]


def _name(value: int, names: list[str]) -> str:
    return names[value] if 0 <= value < len(names) else f"class_{value}"
