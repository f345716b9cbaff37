"""``sam3-lora data validate --config``: every split of a training config, before training.

Each split is validated as ``data validate`` does, then opened as training opens it, and its
categories are listed with the prompt texts training will use and the objects each has to find.
"""

from __future__ import annotations

from collections import Counter

from sam3_lora.config import Config
from sam3_lora.data.coco import CocoDataset
from sam3_lora.data.sources import split_sources
from sam3_lora.data.validate import PromptCount, SplitReport, validate_split
from sam3_lora.errors import DatasetError


def validate_config(config: Config, decode_images: bool = True) -> list[SplitReport]:
    """Check every split a training config points to, with the prompts training will use.

    Each report also lists, per category, the prompt text, synonyms and the number of objects and
    images it has to find (non-crowd objects with an area, as training counts them).
    """
    reports = []
    for source in split_sources(config):
        if source.annotation_file is None:
            report = SplitReport(source.label, split=source.name, note=source.note)
            if source.problem:
                report.add("error", "missing_split", f"data.{source.name}", source.problem)
            reports.append(report)
            continue
        report = validate_split(
            source.annotation_file, source.images_dir, decode_images=decode_images
        )
        report.split, report.note = source.name, source.note
        try:
            dataset = CocoDataset(source.annotation_file, source.images_dir)
        except DatasetError as error:
            report.add("error", "unloadable", source.annotation_file.name, str(error))
        else:
            report.prompts = prompt_counts(dataset)
        reports.append(report)
    return reports


def prompt_counts(dataset: CocoDataset) -> list[PromptCount]:
    """Per category: its prompt and synonyms, and the objects / images training gives it."""
    objects: Counter[int] = Counter()
    crowd: Counter[int] = Counter()
    images: dict[int, set[int]] = {}
    for index in range(len(dataset)):
        for instance in dataset.instances(index, with_masks=False):
            if instance.iscrowd:
                crowd[instance.category_id] += 1
            elif instance.area > 1e-6:
                objects[instance.category_id] += 1
                images.setdefault(instance.category_id, set()).add(index)
    return [
        PromptCount(
            c.id,
            c.name,
            c.prompt,
            c.synonyms,
            objects[c.id],
            len(images.get(c.id, ())),
            crowd[c.id],
        )
        for c in dataset.categories
    ]
