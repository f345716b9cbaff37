"""Hugging Face datasets (hub name, local ``save_to_disk`` folder, or a Roboflow export) -> COCO.

Rows hold an image column and an objects column with ``bbox``, ``category`` and optionally
``segmentation`` (polygons or RLE per object), the layout of cppe-5, RF100-VL and similar
detection datasets. Image bytes are written as stored (no re-encoding). Repositories made by
``roboflow2huggingface`` (``data/{train,valid,test}.zip`` behind a loading script) are detected
first and read by :mod:`~sam3_lora.data.convert.roboflow_hub`.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sam3_lora.data.convert.writer import CocoWriter, ConversionResult, normalize_split
from sam3_lora.errors import DatasetError

logger = logging.getLogger(__name__)

_CATEGORY_KEYS = ("category", "categories", "category_id", "label", "labels")
_BBOX_KEYS = ("bbox", "bboxes", "boxes")
_SEGMENTATION_KEYS = ("segmentation", "segmentations", "polygons", "mask", "masks")


def load_hf_dataset(name_or_path: str | Path, split: str | None = None) -> Any:
    """A ``Dataset`` / ``DatasetDict`` from a ``save_to_disk`` folder or the hub."""
    import datasets

    path = Path(name_or_path)
    try:
        if path.exists():
            loaded = datasets.load_from_disk(str(path))
            if split is not None and isinstance(loaded, datasets.DatasetDict):
                return datasets.DatasetDict({split: loaded[split]})
            return loaded
        return datasets.load_dataset(str(name_or_path), split=split)
    except KeyError:
        raise DatasetError(f"dataset {name_or_path} has no split {split!r}") from None
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as error:
        raise DatasetError(
            f"cannot load Hugging Face dataset {name_or_path!r}: {error}. Give a hub name "
            "(needs network) or a folder written by Dataset.save_to_disk"
        ) from None


def convert_hf(
    dataset: str | Path | Any,
    output_dir: str | Path,
    split: str | None = None,
    *,
    image_column: str = "image",
    objects_column: str = "objects",
    bbox_format: str = "xywh",
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
) -> list[ConversionResult]:
    """Convert every split (or only ``split``) of a HF dataset; returns one result per split.

    Args:
        dataset: hub name, local folder or zip, or an already loaded ``Dataset`` /
            ``DatasetDict``.
        bbox_format: ``xywh`` (COCO, pixels) or ``xyxy`` (pixels).
        cache_dir: hub cache (default: huggingface_hub's); ``local_files_only`` None follows
            ``HF_HUB_OFFLINE``.
    """
    import datasets

    from sam3_lora.data.convert.roboflow_hub import convert_roboflow_zips, roboflow_split_zips

    if bbox_format not in ("xywh", "xyxy"):
        raise DatasetError(f"bbox format {bbox_format!r} is not 'xywh' or 'xyxy'")
    if isinstance(dataset, str | Path):
        with roboflow_split_zips(
            dataset, split, cache_dir=cache_dir, local_files_only=local_files_only
        ) as zips:
            if zips is not None:
                return convert_roboflow_zips(zips, output_dir)
    loaded = dataset if not isinstance(dataset, str | Path) else load_hf_dataset(dataset, split)
    if isinstance(loaded, datasets.DatasetDict):
        parts = list(loaded.items())
    else:
        parts = [(split or "train", loaded)]
    results = []
    for split_name, part in parts:
        for column in (image_column, objects_column):
            if column not in part.column_names:
                raise DatasetError(
                    f"dataset split {split_name!r} has no column {column!r} (columns: "
                    f"{part.column_names}); pass --image_column / --objects_column"
                )
        results.append(
            _convert_split(part, split_name, output_dir, image_column, objects_column, bbox_format)
        )
    return results


def _convert_split(
    part: Any,
    split_name: str,
    output_dir: str | Path,
    image_column: str,
    objects_column: str,
    bbox_format: str,
) -> ConversionResult:
    import datasets

    names = _class_names(part.features[objects_column])
    raw = part.cast_column(image_column, datasets.Image(decode=False))
    writer = CocoWriter(output_dir, normalize_split(split_name))
    for name in names or []:
        writer.category_id(name)
    for row_index, row in enumerate(tqdm(raw, desc=f"hf {split_name}", unit="img", leave=False)):
        where = f"dataset split {split_name!r}, row {row_index}"
        data, file_name = _image_bytes(row[image_column], where, row_index)
        try:
            image_id = writer.add_image(data=data, file_name=file_name)
        except DatasetError as error:
            raise DatasetError(f"{where}: {error}") from None
        objects = _objects_as_dict(row[objects_column], where)
        _add_objects(writer, image_id, objects, names, bbox_format, where)
    return writer.write()


def _add_objects(
    writer: CocoWriter,
    image_id: int,
    objects: dict[str, list[Any]],
    names: list[str] | None,
    bbox_format: str,
    where: str,
) -> None:
    boxes = _first(objects, _BBOX_KEYS) or []
    categories = _first(objects, _CATEGORY_KEYS)
    segmentations = _first(objects, _SEGMENTATION_KEYS)
    if categories is None or len(categories) != len(boxes):
        raise DatasetError(f"{where}: every object needs a bbox and a category")
    width, height = writer.image_size(image_id)
    for index, (box, category) in enumerate(zip(boxes, categories, strict=True)):
        here = f"{where}, object {index}"
        if not (isinstance(box, list | tuple) and len(box) == 4) or not all(
            isinstance(v, int | float) and math.isfinite(v) for v in box
        ):
            raise DatasetError(f"{here}: bbox {box!r} must be 4 finite numbers")
        x1, y1, a, b = (float(v) for v in box)
        xyxy = [x1, y1, x1 + a, y1 + b] if bbox_format == "xywh" else [x1, y1, a, b]
        if xyxy[2] < xyxy[0] or xyxy[3] < xyxy[1]:
            raise DatasetError(f"{here}: bbox {box!r} is negative in {bbox_format} format")
        if isinstance(category, str):
            name = category
        elif names is not None and 0 <= int(category) < len(names):
            name = names[int(category)]
        else:
            name = f"class_{int(category)}"
        segmentation = segmentations[index] if segmentations is not None else None
        polygons, rle, mask = _segmentation(segmentation, here, width, height)
        writer.add_annotation(
            image_id,
            writer.category_id(name),
            polygons=polygons,
            rle=rle,
            mask=mask,
            bbox_xyxy=xyxy,
        )


def _segmentation(
    value: Any, where: str, width: int, height: int
) -> tuple[list[list[float]] | None, dict[str, Any] | None, np.ndarray | None]:
    if value is None or value == [] or value == {}:
        return None, None, None
    if isinstance(value, dict) and "counts" in value:
        return None, value, None
    if hasattr(value, "size") and hasattr(value, "mode"):  # a PIL mask image
        mask = np.asarray(value) > 0
        if mask.shape != (height, width):
            raise DatasetError(f"{where}: mask is {mask.shape[::-1]}, image is {width}x{height}")
        return None, None, mask
    if isinstance(value, list) and value and isinstance(value[0], int | float):
        value = [value]
    if isinstance(value, list) and all(isinstance(p, list) and len(p) >= 6 for p in value):
        return [[float(v) for v in p] for p in value], None, None
    raise DatasetError(f"{where}: segmentation must be polygons [[x1, y1, ...], ...] or an RLE")


def _image_bytes(value: Any, where: str, row_index: int) -> tuple[bytes, str]:
    if not isinstance(value, dict):
        raise DatasetError(f"{where}: the image column does not hold images")
    data, path = value.get("bytes"), value.get("path")
    if data is None and path:
        try:
            data = Path(path).read_bytes()
        except OSError as error:
            raise DatasetError(f"{where}: image file {path} cannot be read ({error})") from None
    if not data:
        raise DatasetError(f"{where}: empty image")
    name = Path(path).name if path else f"{row_index:06d}{_suffix(data)}"
    return data, name


def _suffix(data: bytes) -> str:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}.get(image.format or "", ".png")
    except OSError:
        return ".png"


def _objects_as_dict(objects: Any, where: str) -> dict[str, list[Any]]:
    if isinstance(objects, dict):
        return objects
    if isinstance(objects, list) and all(isinstance(o, dict) for o in objects):
        keys = {k for o in objects for k in o}
        return {k: [o.get(k) for o in objects] for k in keys}
    raise DatasetError(f"{where}: the objects column must hold a dict of lists or a list of dicts")


def _first(objects: dict[str, list[Any]], keys: tuple[str, ...]) -> list[Any] | None:
    return next((objects[k] for k in keys if k in objects), None)


def _class_names(feature: Any) -> list[str] | None:
    while hasattr(feature, "feature") and not isinstance(feature, dict):
        feature = feature.feature
    if isinstance(feature, list) and feature:
        feature = feature[0]
    if not isinstance(feature, dict):
        return None
    for key in _CATEGORY_KEYS:
        inner = feature.get(key)
        while inner is not None and hasattr(inner, "feature"):
            inner = inner.feature
        if inner is not None and hasattr(inner, "names"):
            return list(inner.names)
    return None
