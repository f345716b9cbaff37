"""Import a COCO file: ids re-indexed, prompts kept, polygons kept or turned into RLE."""

from __future__ import annotations

import logging
from pathlib import Path

from tqdm import tqdm

from sam3_lora.data.coco import CocoDataset
from sam3_lora.data.convert.writer import CocoWriter, ConversionResult
from sam3_lora.errors import DatasetError

logger = logging.getLogger(__name__)


def import_coco(
    coco_json: str | Path,
    images_dir: str | Path | None,
    output_dir: str | Path,
    split: str = "train",
    *,
    mask_format: str = "keep",
    image_mode: str = "copy",
    skip_bad_images: bool = False,
) -> ConversionResult:
    """Copy a COCO dataset into ``output_dir/split`` with fresh contiguous ids.

    Args:
        coco_json: the COCO instances file.
        images_dir: folder its ``file_name`` entries are relative to (default: the JSON's folder).
        mask_format: ``keep`` polygons / RLE as they are, or ``rle`` to store everything as RLE.
        skip_bad_images: skip missing / unreadable / resized images with a warning instead of
            stopping at the first one.
    """
    source = CocoDataset(coco_json, images_dir)
    writer = CocoWriter(output_dir, split, image_mode=image_mode, mask_format=mask_format)
    category_ids = {
        category.id: writer.category_id(category.name, category.prompt, category.synonyms)
        for category in source.categories
    }
    if len({c.name for c in source.categories}) < len(source.categories):
        _merge_warning(writer, source)
    for index, image in enumerate(tqdm(source.images, desc="coco", unit="img", leave=False)):
        try:
            image_id = writer.add_image(image.path, expected_size=(image.width, image.height))
        except DatasetError as error:
            message = f"{source.annotation_file}: image id {image.id} ({image.file_name}): {error}"
            if not skip_bad_images:
                raise DatasetError(f"{message}; use --skip_bad_images to leave it out") from None
            writer.skip(message)
            continue
        for annotation in source.raw_annotations(index):
            segmentation = annotation.get("segmentation") or None
            bbox = annotation.get("bbox")
            box = None if bbox is None else [bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]]
            writer.add_annotation(
                image_id,
                category_ids[annotation["category_id"]],
                polygons=segmentation if isinstance(segmentation, list) else None,
                rle=segmentation if isinstance(segmentation, dict) else None,
                bbox_xyxy=box,
                iscrowd=bool(annotation.get("iscrowd", 0)),
            )
    return writer.write()


def _merge_warning(writer: CocoWriter, source: CocoDataset) -> None:
    seen: dict[str, int] = {}
    for category in source.categories:
        if category.name in seen:
            writer.warn(
                f"{source.annotation_file}: categories {seen[category.name]} and {category.id} are "
                f"both named {category.name!r}; they are merged into one class"
            )
        seen.setdefault(category.name, category.id)
