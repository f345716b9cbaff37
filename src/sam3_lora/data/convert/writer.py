"""The one place that writes a COCO split: images copied in, ids assigned, JSON written.

Every converter feeds a :class:`CocoWriter`; the result is ``<output_dir>/<split>/`` holding
the images and ``_annotations.coco.json`` (the layout :class:`CocoDataset` reads). Writing
into a split that already has an annotation file appends to it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from sam3_lora.data.coco import segmentation_box_xyxy, segmentation_to_rle
from sam3_lora.data.images import read_image_size
from sam3_lora.data.jsonio import read_json, write_json
from sam3_lora.errors import DatasetError

logger = logging.getLogger(__name__)

ANNOTATION_FILE = "_annotations.coco.json"
SPLIT_ALIASES = {"val": "valid", "validation": "valid", "dev": "valid"}
IMAGE_MODES = ("copy", "link")


def normalize_split(split: str) -> str:
    """Map ``val`` / ``validation`` to ``valid``; other names are kept (lower-cased)."""
    name = split.strip().lower()
    return SPLIT_ALIASES.get(name, name)


@dataclass
class ConversionResult:
    """What a converter wrote, for the summary table."""

    annotation_file: Path
    images: int = 0
    annotations: int = 0
    categories: int = 0
    box_only: int = 0
    skipped: int = 0
    dropped: int = 0
    missing: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def split(self) -> str:
        return self.annotation_file.parent.name


class CocoWriter:
    """Collect one split's categories, images and annotations, then :meth:`write` them.

    Args:
        output_dir: dataset folder (``data/``); the split folder is created inside it.
        split: split name (``val`` / ``validation`` become ``valid``).
        image_mode: ``copy`` the image files, or ``link`` them (hard links, copy as fallback;
            symlinks are never made since the loader rejects links out of the dataset).
        mask_format: ``keep`` segmentations as given, or store all as ``rle``.
    """

    def __init__(
        self,
        output_dir: str | Path,
        split: str,
        image_mode: str = "copy",
        mask_format: str = "keep",
    ):
        if image_mode not in IMAGE_MODES:
            raise DatasetError(f"image mode {image_mode!r} is not one of {IMAGE_MODES}")
        if mask_format not in ("keep", "rle"):
            raise DatasetError(f"mask format {mask_format!r} is not 'keep' or 'rle'")
        self.split_dir = Path(output_dir) / normalize_split(split)
        self.image_mode = image_mode
        self.mask_format = mask_format
        self.result = ConversionResult(self.split_dir / ANNOTATION_FILE)
        self._data: dict[str, Any] = {"images": [], "annotations": [], "categories": []}
        self._category_ids: dict[str, int] = {}
        self._sizes: dict[int, tuple[int, int]] = {}
        self._used_names: set[str] = set()
        self._missing_names: list[str] = []
        self._load_existing()

    def category_id(
        self, name: str, prompt: str | None = None, synonyms: tuple[str, ...] | list[str] = ()
    ) -> int:
        """The id of the category called ``name``, created (with prompt / synonyms) if new."""
        name = str(name).strip()
        if not name:
            raise DatasetError("a category name is empty; give every class a name")
        if name in self._category_ids:
            return self._category_ids[name]
        category_id = len(self._data["categories"]) + 1
        while any(c["id"] == category_id for c in self._data["categories"]):
            category_id += 1
        record: dict[str, Any] = {"id": category_id, "name": name, "supercategory": "none"}
        if prompt and prompt != name:
            record["prompt"] = prompt
        if synonyms:
            record["synonyms"] = list(synonyms)
        self._data["categories"].append(record)
        self._category_ids[name] = category_id
        return category_id

    def add_image(
        self,
        source: str | Path | None = None,
        *,
        data: bytes | None = None,
        file_name: str | None = None,
        expected_size: tuple[int, int] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> int:
        """Copy an image file (or write encoded ``data``) into the split; return its new id.

        ``expected_size`` (width, height), when the annotations state one, must match the file.
        """
        if source is None and data is None:
            raise ValueError("add_image needs a source file or encoded data")
        name = self._unique_name(file_name or Path(source).name)  # type: ignore[arg-type]
        target = self.split_dir / name
        self.split_dir.mkdir(parents=True, exist_ok=True)
        try:
            if data is not None:
                target.write_bytes(data)
            else:
                self._place(Path(source), target)  # type: ignore[arg-type]
            width, height = read_image_size(target)
        except FileNotFoundError as error:
            raise DatasetError(f"image {source} does not exist") from error
        except DatasetError:
            target.unlink(missing_ok=True)
            raise
        if expected_size is not None and tuple(expected_size) != (width, height):
            target.unlink(missing_ok=True)
            raise DatasetError(
                f"image {source or name} is {width}x{height} but its annotations say "
                f"{expected_size[0]}x{expected_size[1]}; the annotations belong to a resized "
                "copy: use the images they were made on"
            )
        self._used_names.add(name)
        image_id = self._next_image_id
        self._next_image_id += 1
        record = {"id": image_id, "file_name": name, "width": width, "height": height}
        record.update(extra or {})
        self._data["images"].append(record)
        self._sizes[image_id] = (width, height)
        self.result.images += 1
        return image_id

    def add_missing_image(
        self, file_name: str, width: int, height: int, extra: dict[str, Any] | None = None
    ) -> int:
        """Record an image that is not available locally, sized as its annotations say.

        Its annotations are converted; the file must be copied into the split folder (under the
        recorded ``file_name``) before training. Counted in ``result.missing``.
        """
        if not (_positive_int(width) and _positive_int(height)):
            raise DatasetError(
                f"image {file_name} is missing and its size {width}x{height} is unusable; "
                "put the image next to the annotations"
            )
        name = self._unique_name(file_name)
        self._used_names.add(name)
        image_id = self._next_image_id
        self._next_image_id += 1
        record = {"id": image_id, "file_name": name, "width": int(width), "height": int(height)}
        record.update(extra or {})
        self._data["images"].append(record)
        self._sizes[image_id] = (int(width), int(height))
        self.result.images += 1
        self.result.missing += 1
        self._missing_names.append(name)
        return image_id

    def image_size(self, image_id: int) -> tuple[int, int]:
        """(width, height) of an image added to this writer."""
        return self._sizes[image_id]

    def add_annotation(
        self,
        image_id: int,
        category_id: int,
        *,
        polygons: list[list[float]] | None = None,
        rle: dict[str, Any] | None = None,
        mask: np.ndarray | None = None,
        bbox_xyxy: list[float] | tuple[float, ...] | np.ndarray | None = None,
        iscrowd: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> int:
        """Add one object given as polygons (pixels), an RLE, a bool mask or a box only.

        The box defaults to the segmentation's extent and the area to its pixel count.
        """
        width, height = self._sizes[image_id]
        segmentation: Any = None
        if mask is not None:
            segmentation = _encode_mask(mask)
        elif rle is not None:
            segmentation = _compress(segmentation_to_rle(rle, height, width))
        elif polygons:
            segmentation = [[round(float(v), 2) for v in polygon] for polygon in polygons]
            if self.mask_format == "rle":
                segmentation = _compress(segmentation_to_rle(segmentation, height, width))
        if segmentation is None and bbox_xyxy is None:
            raise ValueError("an annotation needs a segmentation or a box")
        if bbox_xyxy is None:
            box = segmentation_box_xyxy(segmentation, height, width)
        else:
            box = np.asarray(bbox_xyxy, dtype=np.float64)
        x1, x2 = np.clip([box[0], box[2]], 0, width)
        y1, y2 = np.clip([box[1], box[3]], 0, height)
        bbox = [round(float(x1), 2), round(float(y1), 2), round(float(x2 - x1), 2)]
        bbox.append(round(float(y2 - y1), 2))
        if segmentation is not None:
            rle_mask = segmentation_to_rle(segmentation, height, width)
            area = float(mask_utils.area(rle_mask))
        else:
            area = bbox[2] * bbox[3]
            self.result.box_only += 1
        annotation_id = self._next_annotation_id
        self._next_annotation_id += 1
        record: dict[str, Any] = {
            "id": annotation_id,
            "image_id": image_id,
            "category_id": category_id,
            "bbox": bbox,
            "area": round(area, 2),
            "segmentation": segmentation if segmentation is not None else [],
            "iscrowd": int(bool(iscrowd)),
        }
        record.update(extra or {})
        self._data["annotations"].append(record)
        self.result.annotations += 1
        return annotation_id

    def warn(self, message: str) -> None:
        """Log a warning and keep it for the summary."""
        logger.warning(message)
        self.result.warnings.append(message)

    def skip(self, message: str, count: int = 1) -> None:
        """Record ``count`` inputs skipped for one reason (missing image, unusable shape, ...)."""
        self.result.skipped += count
        self.warn(message)

    def write(self) -> ConversionResult:
        """Write ``_annotations.coco.json`` and return the summary."""
        self.split_dir.mkdir(parents=True, exist_ok=True)
        if self._missing_names:
            names = self._missing_names
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            self.warn(
                f"{len(self._missing_names)} images are not available ({shown}): their "
                "annotations are kept, sized from the annotation file; copy the images into "
                f"{self.split_dir} under those names before training"
            )
        self._data.setdefault("info", {"description": "written by sam3-lora data"})
        write_json(self.result.annotation_file, self._data)
        self.result.categories = len(self._data["categories"])
        logger.info(
            "%s: %d images, %d annotations written",
            self.result.annotation_file,
            self.result.images,
            self.result.annotations,
        )
        return self.result

    def _load_existing(self) -> None:
        path = self.split_dir / ANNOTATION_FILE
        self._next_image_id = self._next_annotation_id = 1
        if not path.exists():
            return
        from sam3_lora.data.coco import CocoDataset

        CocoDataset(path)  # structural checks with clear messages before we append
        data = read_json(path)
        self._data = data
        data.setdefault("annotations", [])
        data.setdefault("categories", [])
        self._category_ids = {c["name"]: c["id"] for c in data["categories"]}
        self._sizes = {i["id"]: (i["width"], i["height"]) for i in data["images"]}
        self._used_names = {i["file_name"] for i in data["images"]}
        self._next_image_id = max((i["id"] for i in data["images"]), default=0) + 1
        self._next_annotation_id = max((a["id"] for a in data["annotations"]), default=0) + 1
        logger.info("appending to %s (%d images already)", path, len(data["images"]))

    def _unique_name(self, name: str) -> str:
        stem, suffix = os.path.splitext(safe_file_name(name))
        candidate, counter = stem + suffix, 1
        while candidate in self._used_names or (self.split_dir / candidate).exists():
            candidate = f"{stem}_{counter}{suffix}"
            counter += 1
        return candidate

    def _place(self, source: Path, target: Path) -> None:
        if self.image_mode == "link":
            try:
                os.link(source, target)
                return
            except OSError:
                logger.debug("hard link %s failed, copying", source)
        shutil.copyfile(source, target)


def safe_file_name(name: str) -> str:
    """A portable base name: undecodable bytes, separators and odd characters become ``_``."""
    text = name.encode("utf-8", "replace").decode("utf-8") if _has_surrogates(name) else name
    text = unicodedata.normalize("NFC", Path(text.replace("\\", "/")).name)
    text = re.sub(r"[^\w.\-]+", "_", text, flags=re.UNICODE).strip("._") or "image"
    return text


def _positive_int(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and value > 0
        and (float(value).is_integer())
    )


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _encode_mask(mask: np.ndarray) -> dict[str, Any]:
    return _compress(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8))))


def _compress(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [int(v) for v in rle["size"]], "counts": counts}
