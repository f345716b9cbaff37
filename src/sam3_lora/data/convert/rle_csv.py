"""Run-length CSVs of the Kaggle Severstal kind -> COCO instances.

``ImageId,ClassId,EncodedPixels`` (long) or ``ImageId_ClassId,EncodedPixels`` (wide, with empty
rows for absent classes); runs are 1-based "start length" pairs, column-major. Each class mask is
split into connected components; those under ``min_area`` pixels are dropped and counted.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from pycocotools import mask as mask_utils
from tqdm import tqdm

from sam3_lora.data.coco import decode_rle
from sam3_lora.data.convert.mask_cleanup import (
    MaskFixes,
    default_min_area,
    drop_small_components,
)
from sam3_lora.data.convert.writer import CocoWriter, ConversionResult
from sam3_lora.errors import DatasetError

logger = logging.getLogger(__name__)


def convert_rle_csv(
    csv_path: str | Path,
    images_dir: str | Path,
    output_dir: str | Path,
    split: str = "train",
    *,
    classes: list[str] | None = None,
    split_components: bool = True,
    min_area: int | None = None,
    skip_missing: bool = False,
    image_mode: str = "copy",
) -> ConversionResult:
    """Convert a Severstal-style RLE CSV; ``ClassId`` k is named ``classes[k-1]`` (or defect_k).

    ``min_area`` None: :func:`~sam3_lora.data.convert.mask_cleanup.default_min_area`.
    """
    csv_path, images_root = Path(csv_path), Path(images_dir)
    rows = _read_rle_rows(csv_path)
    writer = CocoWriter(output_dir, split, image_mode=image_mode)
    fixes = MaskFixes(csv_path)
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
        floor = default_min_area(width, height) if min_area is None else min_area
        fixes.min_area = floor
        for line, class_id, encoded in entries:
            if not encoded:
                continue
            where = f"{csv_path}, line {line} ({image_name}, class {class_id})"
            counts = rle_to_coco_counts(encoded, height, width, where)
            rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
            name = classes[class_id - 1] if classes and 0 < class_id <= len(classes) else None
            category = writer.category_id(name or f"defect_{class_id}")
            if split_components:
                for part, _ in drop_small_components(decode_rle(rle), floor, fixes):
                    writer.add_annotation(image_id, category, mask=part)
            else:
                writer.add_annotation(image_id, category, rle=rle)
    if fixes.dropped:
        writer.result.dropped += fixes.dropped
        writer.warn(
            f"{csv_path}: {fixes.dropped} components under {fixes.min_area} px dropped "
            f"({fixes.dropped_pixels} px); pass --min_area to change the floor"
        )
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
