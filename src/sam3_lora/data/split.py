"""Deterministic train / valid / test split of a COCO dataset folder.

All images of the existing splits are pooled, grouped so that near-duplicates stay together
(Roboflow augmentations share the name before ``.rf.``), shuffled with a seed and dealt out by
ratio. Re-running with the same seed gives the same split.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
from pathlib import Path

from sam3_lora.data.coco import CocoDataset, find_annotation_file
from sam3_lora.data.convert.writer import CocoWriter, ConversionResult
from sam3_lora.data.layout import SPLIT_NAMES as SPLITS
from sam3_lora.errors import DatasetError

logger = logging.getLogger(__name__)

_ROBOFLOW_SUFFIX = re.compile(r"\.rf\.[0-9a-f]+$")


def group_key(file_name: str) -> str:
    """Images with the same key go to the same split (``x_jpg.rf.<hash>.jpg`` -> ``x_jpg``)."""
    stem = Path(file_name).stem
    return _ROBOFLOW_SUFFIX.sub("", stem)


def split_counts(total: int, ratios: tuple[float, ...] | list[float]) -> list[int]:
    """Deal ``total`` items by ``ratios`` (summing to 1) with counts that add up exactly."""
    if not 2 <= len(ratios) <= 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1) > 1e-6:
        raise DatasetError(
            f"--ratios {list(ratios)} must be 2 or 3 non-negative numbers that sum to 1, "
            "e.g. 0.8 0.1 0.1"
        )
    bounds = [round(total * sum(ratios[: i + 1])) for i in range(len(ratios))]
    return [b - a for a, b in zip([0, *bounds[:-1]], bounds, strict=True)]


def split_dataset(
    data_dir: str | Path,
    ratios: tuple[float, ...] | list[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    output_dir: str | Path | None = None,
) -> list[ConversionResult]:
    """Re-split ``data_dir`` into ``output_dir`` (default: ``data_dir`` itself, replaced safely)."""
    data_dir = Path(data_dir)
    sources = [
        CocoDataset(find_annotation_file(data_dir / s))
        for s in SPLITS
        if (data_dir / s).is_dir() and any((data_dir / s).glob("*.json"))
    ]
    if not sources:
        raise DatasetError(f"{data_dir} has no split with an annotation file to re-split")
    groups: dict[str, list[tuple[CocoDataset, int]]] = {}
    for dataset in sources:
        for index, image in enumerate(dataset.images):
            groups.setdefault(group_key(image.file_name), []).append((dataset, index))
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    counts = split_counts(len(keys), ratios)
    in_place = output_dir is None or Path(output_dir).resolve() == data_dir.resolve()
    target = data_dir / ".split-staging" if in_place else Path(output_dir)  # type: ignore[arg-type]
    if target.exists() and in_place:
        shutil.rmtree(target)
    results, start = [], 0
    for name, count in zip(SPLITS, counts, strict=False):
        writer = CocoWriter(target, name)
        for dataset in sources:
            for category in dataset.categories:
                writer.category_id(category.name, category.prompt, category.synonyms)
        for key in keys[start : start + count]:
            for dataset, index in groups[key]:
                _copy_image(writer, dataset, index)
        start += count
        results.append(writer.write())
    if in_place:
        for name in SPLITS:
            if (data_dir / name).exists():
                shutil.rmtree(data_dir / name)
            if (target / name).exists():
                (target / name).rename(data_dir / name)
        shutil.rmtree(target)
        for result in results:
            result.annotation_file = (
                data_dir / result.annotation_file.parent.name / (result.annotation_file.name)
            )
    logger.info("split %d groups into %s", len(keys), counts)
    return results


def _copy_image(writer: CocoWriter, dataset: CocoDataset, index: int) -> None:
    image = dataset.images[index]
    image_id = writer.add_image(image.path, file_name=Path(image.file_name).name)
    for annotation in dataset.raw_annotations(index):
        category = dataset.category(annotation["category_id"])
        segmentation = annotation.get("segmentation") or None
        bbox = annotation.get("bbox")
        writer.add_annotation(
            image_id,
            writer.category_id(category.name),
            polygons=segmentation if isinstance(segmentation, list) else None,
            rle=segmentation if isinstance(segmentation, dict) else None,
            bbox_xyxy=None
            if bbox is None
            else [bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]],
            iscrowd=bool(annotation.get("iscrowd", 0)),
        )
