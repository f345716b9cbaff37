"""Mask PNGs and run-length CSVs -> COCO instances (RLE).

Mask images (paired with images by file stem):
  * ``binary``: every pixel that is not ``background`` is object; objects are connected
    components. A folder per class (``masks/<class>/<stem>.png``) gives one class each.
  * ``semantic``: pixel value = class index (palette PNGs are read as indices, not colours);
    each class's connected components become instances.
  * ``instance``: pixel value (or RGB colour) = object id; each id is one instance, classed by
    the majority value of an optional semantic mask (``class_masks_dir``).
``ignore_value`` pixels (VOC's 255) belong to no object. A CVAT ``labelmap.txt`` maps RGB
colours to classes. Components smaller than ``min_area`` pixels are dropped.

Run-length CSVs of the Kaggle Severstal kind: ``ImageId,ClassId,EncodedPixels`` (long) or
``ImageId_ClassId,EncodedPixels`` (wide); runs are 1-based "start length" pairs, column-major.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage
from tqdm import tqdm

from sam3_lora.data.coco import decode_rle
from sam3_lora.data.convert.writer import CocoWriter, ConversionResult
from sam3_lora.data.images import is_image_file
from sam3_lora.errors import DatasetError

logger = logging.getLogger(__name__)

MASK_TYPES = ("binary", "semantic", "instance")
MASK_SUFFIXES = ("", "_mask", "_masks", "-mask", "_label", "_labels", "_seg", "_gt")
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def load_class_names(path: str | Path) -> tuple[list[str], list[tuple[int, int, int]] | None]:
    """Names (index = pixel value) from a names file, and colours for a CVAT ``labelmap.txt``.

    A leading ``__ignore__`` line (labelme's ``labels.txt``) is dropped so that
    ``_background_`` is index 0, as in ``class_names.txt``.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"class names file {path} cannot be read: {error}") from None
    lines = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if lines and lines[0] == "__ignore__":
        lines = lines[1:]
    if not all(":" in line for line in lines):
        return lines, None
    names, colours = [], []
    for number, line in enumerate(lines, start=1):
        name, colour = line.split(":")[:2]
        try:
            r, g, b = (int(v) for v in colour.split(","))
        except ValueError:
            raise DatasetError(
                f"{path}, entry {number}: colour {colour!r} is not 'r,g,b'"
            ) from None
        names.append(name)
        colours.append((r, g, b))
    return names, colours


def convert_masks(
    images_dir: str | Path,
    masks_dir: str | Path,
    output_dir: str | Path,
    split: str = "train",
    *,
    mask_type: str = "binary",
    classes: list[str] | None = None,
    colours: list[tuple[int, int, int]] | None = None,
    class_masks_dir: str | Path | None = None,
    class_name: str = "object",
    background: int = 0,
    ignore_value: int | None = 255,
    min_area: int = 10,
    image_mode: str = "copy",
) -> ConversionResult:
    """Convert images + mask PNGs into COCO instances (see the module docstring)."""
    if mask_type not in MASK_TYPES:
        raise DatasetError(f"mask type {mask_type!r} is not one of {MASK_TYPES}")
    images_root, masks_root = Path(images_dir), Path(masks_dir)
    for folder in (images_root, masks_root):
        if not folder.is_dir():
            raise DatasetError(f"folder {folder} does not exist")
    images = sorted(p for p in images_root.rglob("*") if p.is_file() and is_image_file(p))
    if not images:
        raise DatasetError(f"no images found under {images_root}")
    per_class = _per_class_folders(masks_root) if mask_type == "binary" else {}
    writer = CocoWriter(output_dir, split, image_mode=image_mode)
    for name in classes or []:
        if name.lower() not in ("_background_", "background", "__ignore__"):
            writer.category_id(name)
    cache: dict[Path, dict[str, Path]] = {}
    for image_path in tqdm(images, desc="masks", unit="img", leave=False):
        sources = per_class or {None: masks_root}
        found = {
            label: _find_mask(folder, image_path.stem, cache) for label, folder in sources.items()
        }
        if not any(found.values()):
            writer.skip(f"{image_path}: no mask named {image_path.stem}.* in {masks_root}")
            continue
        image_id = writer.add_image(image_path)
        size = writer.image_size(image_id)
        for label, mask_path in found.items():
            if mask_path is None:
                continue
            values = read_label_array(mask_path, colours, size)
            if mask_type == "binary":
                foreground = (values != background) & (values != _ignore(ignore_value))
                name = label or (classes[0] if classes else class_name)
                _add_components(writer, image_id, foreground, writer.category_id(name), min_area)
            elif mask_type == "semantic":
                for value in _object_values(values, background, ignore_value):
                    category = writer.category_id(_class_of(int(value), classes))
                    _add_components(writer, image_id, values == value, category, min_area)
            else:
                class_values = None
                if class_masks_dir is not None:
                    class_path = _find_mask(Path(class_masks_dir), image_path.stem, cache)
                    if class_path is None:
                        raise DatasetError(
                            f"no class mask for {image_path.stem} in {class_masks_dir}"
                        )
                    class_values = read_label_array(class_path, colours, size)
                for value in _object_values(values, background, ignore_value):
                    mask = values == value
                    if mask.sum() < min_area:
                        continue
                    name = class_name
                    if class_values is not None:
                        name = _class_of(
                            _majority(class_values[mask], background, ignore_value), classes
                        )
                    writer.add_annotation(image_id, writer.category_id(name), mask=mask)
    return writer.write()


def read_label_array(
    path: Path,
    colours: list[tuple[int, int, int]] | None = None,
    expected_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Pixel labels of a mask image: palette indices, gray values, or RGB colours mapped to ids.

    RGB masks map through ``colours`` (index = class) when given; otherwise each distinct colour
    becomes an id (black = 0).
    """
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            array = np.asarray(image.convert("L") if mode in ("LA", "1") else image)
    except OSError as error:
        raise DatasetError(f"mask {path} cannot be read ({error})") from None
    if expected_size is not None and (array.shape[1], array.shape[0]) != tuple(expected_size):
        raise DatasetError(
            f"mask {path} is {array.shape[1]}x{array.shape[0]} but its image is "
            f"{expected_size[0]}x{expected_size[1]}; masks must have the image's size"
        )
    if mode == "1":
        return (array > 0).astype(np.int64)
    if array.ndim == 2:
        return array.astype(np.int64)
    rgb = array[..., :3].astype(np.int64)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    if colours is not None:
        table = {(r << 16) | (g << 8) | b: index for index, (r, g, b) in enumerate(colours)}
        values = np.full(packed.shape, -1, dtype=np.int64)
        for colour in np.unique(packed):
            if int(colour) in table:
                values[packed == colour] = table[int(colour)]
            else:
                rgb_text = f"({colour >> 16}, {(colour >> 8) & 255}, {colour & 255})"
                raise DatasetError(f"mask {path}: colour {rgb_text} is not in the label map")
        return values
    unique, inverse = np.unique(packed, return_inverse=True)
    ids = np.arange(len(unique)) + (0 if unique[0] == 0 else 1)
    return ids[inverse].reshape(packed.shape)


def convert_rle_csv(
    csv_path: str | Path,
    images_dir: str | Path,
    output_dir: str | Path,
    split: str = "train",
    *,
    classes: list[str] | None = None,
    split_components: bool = True,
    min_area: int = 10,
    skip_missing: bool = False,
    image_mode: str = "copy",
) -> ConversionResult:
    """Convert a Severstal-style RLE CSV; ``ClassId`` k is named ``classes[k-1]`` (or defect_k)."""
    csv_path, images_root = Path(csv_path), Path(images_dir)
    rows = _read_rle_rows(csv_path)
    writer = CocoWriter(output_dir, split, image_mode=image_mode)
    for image_name, entries in tqdm(rows.items(), desc="rle csv", unit="img", leave=False):
        image_path = images_root / Path(image_name).name
        if not image_path.is_file():
            message = f"{csv_path}: image {image_name} (line {entries[0][0]}) not in {images_root}"
            if not skip_missing:
                raise DatasetError(f"{message}; pass the right --images_dir or --skip_missing")
            writer.skip(message)
            continue
        image_id = writer.add_image(image_path)
        width, height = writer.image_size(image_id)
        for line, class_id, encoded in entries:
            if not encoded:
                continue
            where = f"{csv_path}, line {line} ({image_name}, class {class_id})"
            counts = rle_to_coco_counts(encoded, height, width, where)
            rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
            name = classes[class_id - 1] if classes and 0 < class_id <= len(classes) else None
            category = writer.category_id(name or f"defect_{class_id}")
            if split_components:
                _add_components(writer, image_id, decode_rle(rle), category, min_area)
            else:
                writer.add_annotation(image_id, category, rle=rle)
    return writer.write()


def rle_to_coco_counts(encoded: str, height: int, width: int, where: str) -> list[int]:
    """Kaggle "start length" runs (1-based, column-major) -> COCO uncompressed RLE counts."""
    try:
        numbers = [int(v) for v in encoded.split()]
    except ValueError:
        raise DatasetError(f"{where}: EncodedPixels must be integers 'start length ...'") from None
    if len(numbers) % 2:
        raise DatasetError(f"{where}: EncodedPixels has an odd number of values")
    counts, position, total = [], 0, height * width
    for start, length in zip(numbers[0::2], numbers[1::2], strict=True):
        begin = start - 1
        if begin < position or length <= 0:
            raise DatasetError(
                f"{where}: run '{start} {length}' overlaps the previous run or is empty; runs must "
                "be increasing, 1-based and non-overlapping"
            )
        if begin + length > total:
            raise DatasetError(
                f"{where}: run '{start} {length}' ends past the image ({height}x{width} = "
                f"{total} pixels); is the image size right?"
            )
        counts += [begin - position, length]
        position = begin + length
    counts.append(total - position)
    return counts


def _read_rle_rows(path: Path) -> dict[str, list[tuple[int, int, str]]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as stream:
            reader = csv.DictReader(stream)
            fields = set(reader.fieldnames or [])
            long = {"ImageId", "ClassId", "EncodedPixels"} <= fields
            wide = {"ImageId_ClassId", "EncodedPixels"} <= fields
            if not (long or wide):
                raise DatasetError(
                    f"{path}: columns {sorted(fields)}; expected ImageId,ClassId,EncodedPixels or "
                    "ImageId_ClassId,EncodedPixels (Severstal layouts)"
                )
            rows: dict[str, list[tuple[int, int, str]]] = {}
            for row in reader:
                line = reader.line_num
                if long:
                    image, class_text = row["ImageId"], row["ClassId"]
                else:
                    image, _, class_text = (row["ImageId_ClassId"] or "").rpartition("_")
                try:
                    class_id = int(class_text)
                except (TypeError, ValueError):
                    raise DatasetError(
                        f"{path}, line {line}: class {class_text!r} is not an integer"
                    ) from None
                if not image:
                    raise DatasetError(f"{path}, line {line}: empty image id")
                encoded = (row.get("EncodedPixels") or "").strip()
                rows.setdefault(image, []).append((line, class_id, encoded))
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path} is not UTF-8 text ({error})") from None
    except csv.Error as error:
        raise DatasetError(f"{path}: malformed CSV ({error})") from None
    except FileNotFoundError:
        raise DatasetError(f"CSV file {path} does not exist") from None
    return rows


def _add_components(
    writer: CocoWriter, image_id: int, foreground: np.ndarray, category_id: int, min_area: int
) -> None:
    labels, count = ndimage.label(foreground, structure=_EIGHT_CONNECTED)
    if count == 0:
        return
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    slices = ndimage.find_objects(labels)
    for component, box in enumerate(slices, start=1):
        if sizes[component] < min_area or box is None:
            continue
        mask = labels == component
        writer.add_annotation(image_id, category_id, mask=mask)


def _object_values(values: np.ndarray, background: int, ignore_value: int | None) -> list[int]:
    return [int(v) for v in np.unique(values) if v != background and v != _ignore(ignore_value)]


def _majority(values: np.ndarray, background: int, ignore_value: int | None) -> int:
    keep = values[(values != background) & (values != _ignore(ignore_value))]
    if keep.size == 0:
        return background
    unique, counts = np.unique(keep, return_counts=True)
    return int(unique[np.argmax(counts)])


def _class_of(value: int, classes: list[str] | None) -> str:
    if classes and 0 <= value < len(classes):
        return classes[value]
    return f"class_{value}"


def _ignore(ignore_value: int | None) -> int:
    return -(1 << 40) if ignore_value is None else ignore_value


def _find_mask(folder: Path, stem: str, cache: dict[Path, dict[str, Path]]) -> Path | None:
    index = cache.get(folder)
    if index is None:
        files = sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))
        index = {}
        for path in files:
            index.setdefault(path.stem, path)
        cache[folder] = index
    for suffix in MASK_SUFFIXES:
        if stem + suffix in index:
            return index[stem + suffix]
    return None


def _per_class_folders(masks_root: Path) -> dict[str | None, Path]:
    folders = sorted(p for p in masks_root.iterdir() if p.is_dir())
    if folders and not any(is_image_file(p) for p in masks_root.iterdir() if p.is_file()):
        return {folder.name: folder for folder in folders}
    return {}
