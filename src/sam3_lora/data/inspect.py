"""Look at a dataset: counts per category, object sizes, and a preview grid with ground truth."""

from __future__ import annotations

import colorsys
import itertools
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sam3_lora.data.coco import CocoDataset, find_annotation_file
from sam3_lora.data.layout import SPLIT_NAMES
from sam3_lora.errors import DatasetError

logger = logging.getLogger(__name__)

# Object size bins by sqrt(area) in pixels; 32 and 96 are COCO's small / medium / large limits.
SIZE_BINS = (0, 8, 16, 32, 64, 96, 128, 256, 512)


@dataclass
class SplitStats:
    """Counts for one split."""

    split: str
    images: int = 0
    images_without_objects: int = 0
    instances: int = 0
    box_only: int = 0
    crowd: int = 0
    per_category: Counter[str] = field(default_factory=Counter)
    size_histogram: list[int] = field(default_factory=lambda: [0] * len(SIZE_BINS))


def size_bin_labels() -> list[str]:
    """Labels of :data:`SIZE_BINS` such as ``16-32`` and ``512+`` (sqrt of area, pixels)."""
    edges = list(SIZE_BINS)
    return [f"{a}-{b}" for a, b in itertools.pairwise(edges)] + [f"{edges[-1]}+"]


def split_datasets(data_dir: str | Path, split: str | None = None) -> list[tuple[str, CocoDataset]]:
    """The splits of a dataset folder (or a single split folder) as ``(name, dataset)``."""
    data_dir = Path(data_dir)
    names = [split] if split else [s for s in SPLIT_NAMES if (data_dir / s).is_dir()]
    found = [(n, data_dir / n) for n in names if any((data_dir / n).glob("*.json"))]
    if split and not found:
        raise DatasetError(f"split folder {data_dir / split} has no annotation file")
    if not found:
        return [(data_dir.name, CocoDataset(find_annotation_file(data_dir)))]
    return [(name, CocoDataset.from_split_dir(folder)) for name, folder in found]


def dataset_stats(data_dir: str | Path, split: str | None = None) -> list[SplitStats]:
    """Per-split counts; no image is decoded."""
    results = []
    for name, dataset in split_datasets(data_dir, split):
        stats = SplitStats(name, images=len(dataset))
        for index in range(len(dataset)):
            instances = dataset.instances(index, with_masks=False)
            if not instances:
                stats.images_without_objects += 1
            for instance, raw in zip(instances, dataset.raw_annotations(index), strict=True):
                stats.instances += 1
                stats.per_category[dataset.category(instance.category_id).name] += 1
                stats.crowd += instance.iscrowd
                stats.box_only += not raw.get("segmentation")
                side = float(np.sqrt(max(instance.area, 0.0)))
                stats.size_histogram[int(np.searchsorted(SIZE_BINS, side, side="right")) - 1] += 1
        for category in dataset.categories:
            stats.per_category.setdefault(category.name, 0)
        results.append(stats)
    return results


def render_preview(
    data_dir: str | Path,
    output_png: str | Path,
    *,
    split: str | None = None,
    num_images: int = 16,
    columns: int = 4,
    tile_size: int = 256,
    seed: int = 0,
) -> Path:
    """Draw ``num_images`` random images with masks, boxes and class names into one PNG grid."""
    entries = [
        (dataset, i) for _, dataset in split_datasets(data_dir, split) for i in range(len(dataset))
    ]
    if not entries:
        raise DatasetError(f"{data_dir} has no images to preview")
    chosen = random.Random(seed).sample(entries, min(num_images, len(entries)))
    rows = (len(chosen) + columns - 1) // columns
    grid = Image.new("RGB", (columns * tile_size, rows * tile_size), (32, 32, 32))
    for slot, (dataset, index) in enumerate(chosen):
        tile = _draw_tile(dataset, index, tile_size)
        grid.paste(tile, ((slot % columns) * tile_size, (slot // columns) * tile_size))
    output_png = Path(output_png)
    output_png.parent.mkdir(parents=True, exist_ok=True)
    grid.save(output_png)
    return output_png


def _draw_tile(dataset: CocoDataset, index: int, tile_size: int) -> Image.Image:
    image = dataset.load_image(index)
    record = dataset.images[index]
    scale = tile_size / max(record.width, record.height)
    size = (max(1, round(record.width * scale)), max(1, round(record.height * scale)))
    overlay = np.asarray(image.resize(size, Image.Resampling.BILINEAR)).astype(np.float32)
    instances = dataset.instances(index)
    for instance in instances:
        colour = np.array(_colour(instance.category_id), dtype=np.float32)
        if instance.mask is not None:
            small = np.asarray(
                Image.fromarray(instance.mask).resize(size, Image.Resampling.NEAREST)
            )
            overlay[small] = overlay[small] * 0.5 + colour * 0.5
    tile = Image.new("RGB", (tile_size, tile_size), (32, 32, 32))
    drawn = Image.fromarray(overlay.astype(np.uint8))
    draw = ImageDraw.Draw(drawn)
    for instance in instances:
        colour = _colour(instance.category_id)
        box = [float(v) * scale for v in instance.box_xyxy]
        draw.rectangle(box, outline=colour, width=2)
        draw.text(
            (box[0] + 2, box[1] + 1), dataset.category(instance.category_id).name, fill=colour
        )
    tile.paste(drawn, (0, 0))
    return tile


def _colour(category_id: int) -> tuple[int, int, int]:
    red, green, blue = colorsys.hsv_to_rgb((category_id * 0.618034) % 1.0, 0.8, 1.0)
    return int(red * 255), int(green * 255), int(blue * 255)
