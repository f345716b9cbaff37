"""``sam3-lora data validate --config``: every split of a training config, before training.

Each split is validated as ``data validate`` does, then opened as training opens it, and its
categories are listed with the prompt texts training will use and the objects each has to find.
Its hard negatives are reported too: the vocabulary concepts left out for sharing a word with a
category and, from the negative verification cache when a run wrote one, how often the base model
found each concept present (such a concept is no negative on those images).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table

from sam3_lora.config import Config
from sam3_lora.data.coco import CocoDataset
from sam3_lora.data.negative_cache import cached_check, find_caches, text_digest
from sam3_lora.data.sources import split_sources
from sam3_lora.data.validate import PromptCount, SplitReport, validate_split
from sam3_lora.data.vocabulary import (
    category_texts,
    exclude_overlapping,
    load_negative_vocabulary,
)
from sam3_lora.errors import DatasetError

#: Concepts listed in the presence table (most often present first).
PRESENCE_ROWS = 15


@dataclass
class NegativeReport:
    """A split's hard negatives: what is left out, and what the base model found present."""

    vocabulary: int  # concepts that may be negatives
    excluded: dict[str, str] = field(default_factory=dict)  # concept -> the category text
    cache_file: Path | None = None
    threshold: float | None = None
    images: int = 0
    presence: dict[str, tuple[int, int]] = field(default_factory=dict)  # checked, present


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
            if config.data.num_negative_prompts:
                report.negatives = negative_report(config, dataset)
        reports.append(report)
    return reports


def negative_report(config: Config, dataset: CocoDataset) -> NegativeReport:
    """The split's negative vocabulary and, from the newest verification cache of this
    vocabulary (and of ``model.name_or_path`` when there is one), how often each concept was
    found present."""
    vocabulary, excluded = exclude_overlapping(
        load_negative_vocabulary(config.data.negative_prompts), category_texts(dataset.categories)
    )
    report = NegativeReport(len(vocabulary), excluded)
    digest = text_digest(vocabulary)
    entries = [e for e in find_caches(dataset.annotation_file) if _matches(e, digest)]
    entries.sort(key=lambda e: e.get("model") != config.model.name_or_path)  # stable: newest
    for entry in entries:
        try:
            check = cached_check(entry, config.data.negative_verify_threshold)
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
        report.cache_file, report.threshold = check.cache_file, check.threshold
        report.images, report.presence = len(check.scores), check.presence()
        break
    return report


def _matches(entry: dict, digest: str) -> bool:
    key = entry.get("key")
    return isinstance(key, dict) and key.get("vocabulary_sha256") == digest


def negative_table(report: SplitReport, rows: int = PRESENCE_ROWS) -> Table | None:
    """How often the base model found each vocabulary concept on the split (verification
    cache), most often first; None when no run has verified this split's negatives."""
    negatives = report.negatives
    if negatives is None or negatives.cache_file is None:
        return None
    table = Table(
        title=f"negatives found present by the base model ({report.split}, score >= "
        f"{negatives.threshold:g}, {negatives.images} images)",
        caption=str(negatives.cache_file),
    )
    for column in ("concept", "images checked", "present", "share"):
        table.add_column(column, justify="left" if column == "concept" else "right")
    for concept, (checked, present) in list(negatives.presence.items())[:rows]:
        table.add_row(concept, str(checked), str(present), f"{100 * present / checked:.0f} %")
    return table


def negative_notes(report: SplitReport) -> list[str]:
    """Lines about the split's negatives: concepts left out, and a missing verification."""
    negatives = report.negatives
    if negatives is None:
        return []
    lines = []
    if negatives.excluded:
        left_out = ", ".join(f"{c} ({t})" for c, t in negatives.excluded.items())
        lines.append(f"{report.split}: negatives left out (a word in common): {left_out}")
    if negatives.cache_file is None:
        lines.append(
            f"{report.split}: the negatives ({negatives.vocabulary} concepts) are not verified "
            "yet; the first `sam3-lora train` with data.verify_negatives checks them with the "
            "base model"
        )
    return lines


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
