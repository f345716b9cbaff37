"""The COCO dataset reader: every format is converted to COCO, and this class reads COCO.

Polygons (one or several parts per object), compressed and uncompressed RLE are decoded with
pycocotools. ``iscrowd=1`` annotations are kept (CVAT marks every mask that way). Structural
problems raise :class:`DatasetError` naming the file and the record; content problems (empty
boxes, boxes that disagree with masks, ...) are left to :mod:`sam3_lora.data.validate`.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from sam3_lora.data.images import load_image_rgb, read_image_size, resolve_in_dataset
from sam3_lora.data.jsonio import read_json
from sam3_lora.errors import DatasetError

logger = logging.getLogger(__name__)

ANNOTATION_FILE_NAMES = ("_annotations.coco.json", "annotations.json")


@dataclass(frozen=True)
class Category:
    """A class; ``prompt`` (defaults to ``name``) and ``synonyms`` are the text prompts."""

    id: int
    name: str
    prompt: str
    synonyms: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageRecord:
    """One image entry; ``width`` / ``height`` are the displayed (EXIF-rotated) size."""

    id: int
    file_name: str
    path: Path
    width: int
    height: int


@dataclass
class Instance:
    """One annotated object of an image.

    Attributes:
        box_xyxy: float32 (4,), pixel corners clipped to the image.
        mask: bool (height, width), or None when the annotation has no segmentation.
    """

    annotation_id: int
    category_id: int
    box_xyxy: np.ndarray
    mask: np.ndarray | None
    iscrowd: bool
    area: float


class CocoDataset:
    """Read a COCO instances file; annotations are indexed by image once, masks decoded lazily.

    Args:
        annotation_file: the COCO JSON file.
        images_dir: folder that ``file_name`` entries are relative to (default: the JSON's folder).
    """

    def __init__(self, annotation_file: str | Path, images_dir: str | Path | None = None):
        self.annotation_file = Path(annotation_file)
        self.images_dir = (
            Path(images_dir) if images_dir is not None else self.annotation_file.parent
        )
        data = read_json(self.annotation_file)
        _check_top_level(data, self.annotation_file)
        self.raw: dict[str, Any] = data
        self.categories: list[Category] = _parse_categories(data, self.annotation_file)
        self._categories = {category.id: category for category in self.categories}
        self.images: list[ImageRecord] = _parse_images(data, self.annotation_file, self.images_dir)
        self._index_of_image = {image.id: index for index, image in enumerate(self.images)}
        self._annotations: list[list[dict[str, Any]]] = [[] for _ in self.images]
        self._index_annotations(data.get("annotations") or [])
        logger.debug(
            "%s: %d images, %d categories, %d annotations",
            self.annotation_file,
            len(self.images),
            len(self.categories),
            sum(len(a) for a in self._annotations),
        )

    @classmethod
    def from_split_dir(cls, split_dir: str | Path) -> CocoDataset:
        """Open a split folder (``_annotations.coco.json``, ``annotations.json`` or one json)."""
        return cls(find_annotation_file(split_dir))

    def category(self, category_id: int) -> Category:
        """The category with this id; :class:`DatasetError` for an unknown id."""
        try:
            return self._categories[category_id]
        except KeyError:
            known = sorted(self._categories)
            raise DatasetError(
                f"{self.annotation_file}: unknown category id {category_id}; known ids: {known}"
            ) from None

    def __len__(self) -> int:
        return len(self.images)

    def index_of_image(self, image_id: int) -> int:
        """Position in :attr:`images` of the image with this id."""
        try:
            return self._index_of_image[image_id]
        except KeyError:
            raise DatasetError(f"{self.annotation_file}: no image with id {image_id}") from None

    def load_image(self, index: int) -> Image.Image:
        """The image at ``index`` as RGB (EXIF orientation applied)."""
        return load_image_rgb(self.images[index].path)

    def raw_annotations(self, index: int) -> list[dict[str, Any]]:
        """The (checked) annotation dicts of the image at ``index``, in file order."""
        return self._annotations[index]

    def instances(self, index: int, with_masks: bool = True) -> list[Instance]:
        """The objects of the image at ``index``; masks are decoded only when ``with_masks``."""
        image = self.images[index]
        result = []
        for annotation in self._annotations[index]:
            segmentation = annotation.get("segmentation")
            mask = None
            if with_masks and segmentation:
                mask = decode_segmentation(segmentation, image.height, image.width)
            bbox = annotation.get("bbox")
            if bbox is not None:
                x, y, w, h = (float(v) for v in bbox)
                box = np.array([x, y, x + w, y + h], dtype=np.float64)
            else:
                box = segmentation_box_xyxy(segmentation, image.height, image.width)
            box[0::2] = np.clip(box[0::2], 0, image.width)
            box[1::2] = np.clip(box[1::2], 0, image.height)
            area = annotation.get("area")
            if area is None:
                area = (
                    float(mask.sum())
                    if mask is not None
                    else float((box[2] - box[0]) * (box[3] - box[1]))
                )
            result.append(
                Instance(
                    annotation_id=annotation["id"],
                    category_id=annotation["category_id"],
                    box_xyxy=box.astype(np.float32),
                    mask=mask,
                    iscrowd=bool(annotation.get("iscrowd", 0)),
                    area=float(area),
                )
            )
        return result

    def _index_annotations(self, annotations: Any) -> None:
        path = self.annotation_file
        if not isinstance(annotations, list):
            raise DatasetError(f"{path}: 'annotations' must be a list, got {_kind(annotations)}")
        seen: set[int] = set()
        for position, annotation in enumerate(annotations):
            where = f"{path}: annotation #{position}"
            if not isinstance(annotation, dict):
                raise DatasetError(f"{where} must be an object, got {_kind(annotation)}")
            annotation_id = _as_int(annotation.get("id"), f"{where}: 'id'")
            where = f"{path}: annotation id {annotation_id}"
            if annotation_id in seen:
                raise DatasetError(
                    f"{where} appears twice; annotation ids must be unique "
                    "(run `sam3-lora data validate --fix` to renumber)"
                )
            seen.add(annotation_id)
            image_id = _as_int(annotation.get("image_id"), f"{where}: 'image_id'")
            index = self._index_of_image.get(image_id)
            if index is None:
                raise DatasetError(
                    f"{where} refers to image id {image_id}, which is not in 'images'; "
                    "add the image or remove the annotation"
                )
            category_id = _as_int(annotation.get("category_id"), f"{where}: 'category_id'")
            if category_id not in self._categories:
                raise DatasetError(
                    f"{where} has category id {category_id}, which is not in 'categories' "
                    f"(known: {sorted(self._categories)[:20]}); fix the id or add the category"
                )
            image = self.images[index]
            checked = dict(annotation, id=annotation_id, image_id=image_id, category_id=category_id)
            if annotation.get("bbox") is not None:
                checked["bbox"] = _check_bbox(annotation["bbox"], where)
            segmentation = annotation.get("segmentation")
            if segmentation:
                check_segmentation(segmentation, image.height, image.width, where)
            elif annotation.get("bbox") is None:
                raise DatasetError(f"{where} has neither 'bbox' nor 'segmentation'")
            if annotation.get("area") is not None:
                checked["area"] = _as_float(annotation["area"], f"{where}: 'area'")
            self._annotations[index].append(checked)


def find_annotation_file(split_dir: str | Path) -> Path:
    """The COCO file of a split folder (see :meth:`CocoDataset.from_split_dir`)."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DatasetError(f"split folder {split_dir} does not exist")
    for name in ANNOTATION_FILE_NAMES:
        if (split_dir / name).is_file():
            return split_dir / name
    candidates = sorted(p for p in split_dir.glob("*.json") if p.is_file())
    if len(candidates) == 1:
        return candidates[0]
    found = f"found {len(candidates)} *.json files" if candidates else "found no *.json file"
    raise DatasetError(
        f"no COCO annotation file in {split_dir}: looked for {', '.join(ANNOTATION_FILE_NAMES)} "
        f"or a single *.json ({found}); convert your data with `sam3-lora data ...`"
    )


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Rasterise a COCO segmentation (polygons, compressed or uncompressed RLE) to bool (h, w)."""
    return decode_rle(segmentation_to_rle(segmentation, height, width))


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Decode one compressed RLE to a bool mask (silencing pycocotools' numpy-2 warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """One compressed RLE for a polygon list or an (un)compressed RLE dict."""
    if isinstance(segmentation, list):
        polygons = [[float(v) for v in polygon] for polygon in segmentation]
        # frPyObjects reads a 4-number list as a box: pass polygons one at a time, each >= 6.
        rles = [mask_utils.frPyObjects([polygon], height, width)[0] for polygon in polygons]
        return mask_utils.merge(rles) if len(rles) > 1 else rles[0]
    counts = segmentation["counts"]
    if isinstance(counts, list):
        return mask_utils.frPyObjects(segmentation, height, width)
    if isinstance(counts, str):
        return {"size": list(segmentation["size"]), "counts": counts.encode("ascii")}
    return segmentation


def segmentation_box_xyxy(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Tight float64 ``[x1, y1, x2, y2]`` of a segmentation (polygon extent, or RLE pixels)."""
    if isinstance(segmentation, list):
        points = np.concatenate([np.asarray(p, dtype=np.float64) for p in segmentation])
        xs, ys = points[0::2], points[1::2]
        return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64)
    x, y, w, h = mask_utils.toBbox(segmentation_to_rle(segmentation, height, width))
    return np.array([x, y, x + w, y + h], dtype=np.float64)


def check_segmentation(segmentation: Any, height: int, width: int, where: str) -> None:
    """Raise :class:`DatasetError` (prefixed by ``where``) unless well formed."""
    if isinstance(segmentation, list):
        for part, polygon in enumerate(segmentation):
            problem = polygon_problem(polygon)
            if problem:
                raise DatasetError(
                    f"{where}: polygon {part} {problem}; remove it or run "
                    "`sam3-lora data validate --fix`"
                )
        return
    if not isinstance(segmentation, dict) or "counts" not in segmentation:
        raise DatasetError(
            f"{where}: 'segmentation' must be a list of polygons or an RLE dict with 'size' and "
            f"'counts', got {_kind(segmentation)}"
        )
    size = segmentation.get("size")
    if not (isinstance(size, Sequence) and len(size) == 2 and all(_is_int(v) for v in size)):
        raise DatasetError(f"{where}: RLE 'size' must be [height, width], got {size!r}")
    if list(size) != [height, width]:
        raise DatasetError(
            f"{where}: RLE size {list(size)} (height, width) differs from the image size "
            f"[{height}, {width}]; the mask belongs to another image size"
        )
    counts = segmentation["counts"]
    if isinstance(counts, list):
        if not all(_is_int(v) and v >= 0 for v in counts):
            raise DatasetError(f"{where}: RLE 'counts' must be non-negative integers")
        if sum(counts) != height * width:
            raise DatasetError(
                f"{where}: uncompressed RLE counts sum to {sum(counts)}, expected "
                f"{height * width} (= {height} x {width})"
            )
    elif not isinstance(counts, str | bytes):
        raise DatasetError(f"{where}: RLE 'counts' must be a string or a list of integers")


def polygon_problem(polygon: Any) -> str | None:
    """Why a COCO polygon (flat ``[x1, y1, x2, y2, ...]``) is unusable, or None when it is fine."""
    if not isinstance(polygon, list) or not all(_is_number(v) for v in polygon):
        return "must be a flat list of numbers [x1, y1, x2, y2, ...]"
    if len(polygon) < 6 or len(polygon) % 2:
        return (
            f"has {len(polygon)} coordinates; a polygon needs an even number and at least "
            "3 points (6 numbers)"
        )
    if not all(math.isfinite(v) for v in polygon):
        return "contains NaN or infinite coordinates"
    return None


def _check_top_level(data: Any, path: Path) -> None:
    if isinstance(data, list):
        looks_like_results = bool(data) and isinstance(data[0], dict) and "score" in data[0]
        what = "COCO results (predictions with scores)" if looks_like_results else "a JSON list"
        raise DatasetError(
            f"{path} holds {what}, not a COCO dataset; a dataset is an object with 'images', "
            "'annotations' and 'categories'"
        )
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a COCO object, got {_kind(data)}")
    if "images" not in data:
        raise DatasetError(
            f"{path} has no 'images' list (keys: {sorted(data)[:10]}); is it a COCO instances file?"
        )


def _parse_categories(data: dict[str, Any], path: Path) -> list[Category]:
    records = data.get("categories") or []
    if not isinstance(records, list):
        raise DatasetError(f"{path}: 'categories' must be a list, got {_kind(records)}")
    categories: list[Category] = []
    seen: set[int] = set()
    for position, record in enumerate(records):
        where = f"{path}: category #{position}"
        if not isinstance(record, dict):
            raise DatasetError(f"{where} must be an object, got {_kind(record)}")
        category_id = _as_int(record.get("id"), f"{where}: 'id'")
        where = f"{path}: category id {category_id}"
        if category_id in seen:
            raise DatasetError(f"{where} appears twice; category ids must be unique")
        seen.add(category_id)
        name = record.get("name")
        if not isinstance(name, str) or not name.strip():
            raise DatasetError(f"{where} has no name; give every category a non-empty 'name'")
        prompt = record.get("prompt") or name
        synonyms = record.get("synonyms") or []
        if not isinstance(prompt, str):
            raise DatasetError(f"{where}: 'prompt' must be a string, got {_kind(prompt)}")
        if not isinstance(synonyms, list) or not all(isinstance(s, str) for s in synonyms):
            raise DatasetError(f"{where}: 'synonyms' must be a list of strings")
        categories.append(Category(category_id, name, prompt, tuple(synonyms)))
    return categories


def _parse_images(data: dict[str, Any], path: Path, images_dir: Path) -> list[ImageRecord]:
    records = data["images"]
    if not isinstance(records, list):
        raise DatasetError(f"{path}: 'images' must be a list, got {_kind(records)}")
    images: list[ImageRecord] = []
    seen: set[int] = set()
    for position, record in enumerate(records):
        where = f"{path}: image #{position}"
        if not isinstance(record, dict):
            raise DatasetError(f"{where} must be an object, got {_kind(record)}")
        image_id = _as_int(record.get("id"), f"{where}: 'id'")
        where = f"{path}: image id {image_id}"
        if image_id in seen:
            raise DatasetError(f"{where} appears twice; image ids must be unique")
        seen.add(image_id)
        file_name = record.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            raise DatasetError(f"{where} has no 'file_name'")
        try:
            image_path = resolve_in_dataset(images_dir, file_name)
        except DatasetError as error:
            raise DatasetError(f"{where}: {error}") from None
        width, height = record.get("width"), record.get("height")
        if width is None or height is None:
            width, height = read_image_size(image_path)  # some exporters omit the size
        width = _as_int(width, f"{where}: 'width'")
        height = _as_int(height, f"{where}: 'height'")
        if width <= 0 or height <= 0:
            raise DatasetError(
                f"{where} ({file_name}) has size {width}x{height}; width and height must be "
                "positive (fix them or remove the keys to read them from the image)"
            )
        images.append(ImageRecord(image_id, file_name, image_path, width, height))
    return images


def _check_bbox(bbox: Any, where: str) -> list[float]:
    if not isinstance(bbox, list | tuple) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise DatasetError(f"{where}: 'bbox' must be [x, y, width, height], got {bbox!r}")
    values = [float(v) for v in bbox]
    if not all(math.isfinite(v) for v in values):
        raise DatasetError(f"{where}: 'bbox' {bbox!r} contains NaN or infinite values")
    if values[2] < 0 or values[3] < 0:
        raise DatasetError(
            f"{where}: 'bbox' {bbox!r} has a negative width or height; COCO boxes are "
            "[x, y, width, height], not [x1, y1, x2, y2]"
        )
    return values


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_int(value: Any, what: str) -> int:
    if _is_int(value):
        if not -(2**63) <= value < 2**63:
            raise DatasetError(f"{what} {value} does not fit in 64 bits; renumber the ids")
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if value is None:
        raise DatasetError(f"{what} is missing")
    raise DatasetError(f"{what} must be an integer, got {value!r}")


def _as_float(value: Any, what: str) -> float:
    if not _is_number(value) or not math.isfinite(value):
        raise DatasetError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _kind(value: Any) -> str:
    return type(value).__name__
