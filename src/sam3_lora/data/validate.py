"""Dataset checks: every problem found in a COCO split, a report, and a cleaned copy (``--fix``).

The checker reads the raw JSON so that it can list all problems instead of stopping at the first,
as :class:`~sam3_lora.data.coco.CocoDataset` does. The input is never modified; the fix writes
a new dataset folder whose splits load with ``CocoDataset``.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sam3_lora.data.coco import find_annotation_file
from sam3_lora.data.images import load_image_rgb, read_image_size, resolve_in_dataset
from sam3_lora.data.jsonio import read_json, write_json
from sam3_lora.data.layout import SPLIT_NAMES
from sam3_lora.data.prompt_names import name_problems
from sam3_lora.data.validate_geometry import check_geometry
from sam3_lora.errors import DatasetError

logger = logging.getLogger(__name__)

SPLITS = SPLIT_NAMES


@dataclass
class Issue:
    """One finding; ``record`` names the image / annotation / category it is about."""

    severity: str  # "error" or "warning"
    code: str
    record: str
    message: str


@dataclass
class PromptCount:
    """A category as training prompts it: the text, its synonyms, and what it has to find."""

    category_id: int
    name: str
    prompt: str
    synonyms: tuple[str, ...]
    instances: int  # non-crowd objects with an area: the prompt's targets
    images: int  # images holding at least one of them
    crowd: int = 0


@dataclass
class SplitReport:
    """The findings for one annotation file (and, with ``fix``, its cleaned version)."""

    annotation_file: Path
    images: int = 0
    annotations: int = 0
    categories: int = 0
    issues: list[Issue] = field(default_factory=list)
    fixed: dict[str, Any] | None = None
    split: str | None = None
    prompts: list[PromptCount] = field(default_factory=list)
    note: str | None = None
    negatives: Any = None  # config_check.NegativeReport: the split's hard negatives (--config)

    @property
    def errors(self) -> list[Issue]:
        return [issue for issue in self.issues if issue.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [issue for issue in self.issues if issue.severity == "warning"]

    def add(self, severity: str, code: str, record: str, message: str) -> None:
        self.issues.append(Issue(severity, code, record, message))


def validate_dataset(
    data_dir: str | Path, split: str | None = None, decode_images: bool = True
) -> list[SplitReport]:
    """Validate ``data_dir/<split>`` for one split or every split folder present."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"dataset folder {data_dir} does not exist")
    if split is not None:
        return [validate_split(find_annotation_file(data_dir / split), decode_images=decode_images)]
    splits = [data_dir / name for name in SPLITS if _has_json(data_dir / name)]
    if not splits:
        try:
            return [validate_split(find_annotation_file(data_dir), decode_images=decode_images)]
        except DatasetError:
            raise DatasetError(
                f"{data_dir} has no train/, valid/ or test/ folder and no annotation file; "
                "create one with `sam3-lora data create` or a converter"
            ) from None
    return [
        validate_split(find_annotation_file(folder), decode_images=decode_images)
        for folder in splits
    ]


def validate_split(
    annotation_file: str | Path,
    images_dir: str | Path | None = None,
    *,
    decode_images: bool = True,
    fix: bool = False,
) -> SplitReport:
    """Check one COCO file; with ``fix`` also build ``report.fixed``, a cleaned COCO dict."""
    path = Path(annotation_file)
    root = Path(images_dir) if images_dir is not None else path.parent
    report = SplitReport(path)
    try:
        data = read_json(path)
    except DatasetError as error:
        report.add("error", "unreadable_json", path.name, str(error))
        return report
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        report.add("error", "not_coco", path.name, "not a COCO object with an 'images' list")
        return report
    categories = _check_categories(data.get("categories") or [], report)
    images = _check_images(data["images"], root, report, decode_images)
    annotations = _check_annotations(data.get("annotations") or [], images, categories, report)
    used_categories = Counter(a["category_id"] for a in annotations)
    raw = [a for a in data.get("annotations") or [] if isinstance(a, dict)]
    declared = Counter(a.get("category_id") for a in raw)
    crowd = Counter(a.get("category_id") for a in raw if a.get("iscrowd") in (1, True))
    for category_id, category in categories.items():
        if used_categories[category_id] == 0:
            report.add(
                "warning",
                "unused_category",
                f"category id {category_id}",
                f"category {category['name']!r} has no instances",
            )
        if crowd[category_id] and crowd[category_id] == declared[category_id]:
            report.add(
                "warning",
                "all_crowd",
                f"category id {category_id}",
                f"all {crowd[category_id]} instances of {category['name']!r} are iscrowd=1: "
                "training and evaluation ignore crowd regions, so it has nothing to learn; CVAT's "
                "COCO export marks every mask so: if these are objects, set iscrowd to 0",
            )
    annotated = {a["image_id"] for a in annotations}
    for image_id, image in images.items():
        if image_id not in annotated and image.get("_ok", True):
            report.add(
                "warning",
                "no_annotations",
                _image_record(image),
                "image has no annotations (kept as a negative example)",
            )
    report.images, report.annotations = len(data["images"]), len(data.get("annotations") or [])
    report.categories = len(categories)
    if fix:
        report.fixed = _fixed_copy(data, images, categories, annotations)
    return report


def fix_dataset(
    data_dir: str | Path, output_dir: str | Path, split: str | None = None
) -> list[SplitReport]:
    """Write a cleaned copy of ``data_dir`` (or one split) to ``output_dir``; input untouched."""
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    if (
        output_dir.resolve() == data_dir.resolve()
        or data_dir.resolve() in output_dir.resolve().parents
    ):
        raise DatasetError(f"--fix output {output_dir} must be outside the input {data_dir}")
    names = [split] if split else [s for s in SPLITS if _has_json(data_dir / s)]
    reports = []
    for name in names:
        source_file = find_annotation_file(data_dir / name)
        report = validate_split(source_file, fix=True)
        if report.fixed is None:
            raise DatasetError(f"{source_file} cannot be repaired: {report.errors[0].message}")
        target = output_dir / name
        target.mkdir(parents=True, exist_ok=True)
        for image in tqdm(report.fixed["images"], desc=f"fix {name}", unit="img", leave=False):
            source = resolve_in_dataset(source_file.parent, image["file_name"])
            destination = target / image["file_name"]
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)
        write_json(target / "_annotations.coco.json", report.fixed)
        reports.append(report)
    return reports


def _has_json(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("*.json"))


def _check_categories(records: Any, report: SplitReport) -> dict[int, dict[str, Any]]:
    categories: dict[int, dict[str, Any]] = {}
    names: Counter[str] = Counter()
    for position, record in enumerate(records if isinstance(records, list) else []):
        category_id = record.get("id") if isinstance(record, dict) else None
        where = (
            f"category #{position}" if not _is_int(category_id) else f"category id {category_id}"
        )
        if not _is_int(category_id) or not isinstance(record.get("name"), str):
            report.add("error", "bad_category", where, "needs an integer 'id' and a 'name'")
        elif category_id in categories:
            report.add("error", "duplicate_id", where, "category id appears twice")
        else:
            categories[category_id] = record
            names[record["name"]] += 1
    for name, count in names.items():
        if count > 1:
            report.add(
                "warning",
                "duplicate_name",
                f"category {name!r}",
                f"the name is used by {count} categories; prompts will be ambiguous",
            )
    _check_prompt_names(categories, report)
    return categories


def _check_prompt_names(categories: dict[int, dict[str, Any]], report: SplitReport) -> None:
    """Warn about prompt texts a model cannot ground (``0``, ``class_3``, ``Car`` / ``car``)."""
    texts = []
    for category_id, record in categories.items():
        prompt = record.get("prompt")
        texts.append(
            (category_id, prompt if isinstance(prompt, str) and prompt else record["name"])
        )
    for problem in name_problems(texts):
        if len(problem.category_ids) == 1:
            report.add(
                "warning",
                "ungroundable_name",
                f"category id {problem.category_ids[0]}",
                f"{problem.texts[0]!r} is {problem.reason}, but SAM3 is prompted with this "
                "text; set a 'prompt' (a short noun phrase naming the object) and 'synonyms' on "
                "the category",
            )
        else:
            report.add(
                "warning",
                "similar_names",
                "category ids " + ", ".join(str(i) for i in problem.category_ids),
                f"{', '.join(repr(t) for t in problem.texts)} {problem.reason}; merge them or set "
                "a distinct 'prompt' / 'synonyms' on each category",
            )


def _check_images(
    records: list[Any], root: Path, report: SplitReport, decode_images: bool
) -> dict[int, dict[str, Any]]:
    images: dict[int, dict[str, Any]] = {}
    for position, record in enumerate(tqdm(records, desc="images", unit="img", leave=False)):
        image_id = record.get("id") if isinstance(record, dict) else None
        if not _is_int(image_id):
            report.add("error", "bad_image", f"image #{position}", "needs an integer 'id'")
            continue
        if image_id in images:
            report.add("error", "duplicate_id", f"image id {image_id}", "image id appears twice")
            continue
        image = dict(record, _ok=False)
        images[image_id] = image
        where = _image_record(image)
        width, height = record.get("width"), record.get("height")
        if not (_is_int(width) and _is_int(height) and width > 0 and height > 0):
            report.add(
                "error",
                "bad_size",
                where,
                f"width/height {width}x{height} must be positive integers",
            )
        try:
            path = resolve_in_dataset(root, str(record.get("file_name") or ""))
        except DatasetError as error:
            report.add("error", "unsafe_path", where, str(error))
            continue
        if not path.is_file():
            report.add("error", "missing_image", where, f"{path} does not exist")
            continue
        try:
            actual = read_image_size(path)
            if decode_images:
                load_image_rgb(path, max_side=512)
        except DatasetError as error:
            report.add("error", "unreadable_image", where, str(error))
            continue
        if _is_int(width) and _is_int(height) and actual != (width, height):
            report.add(
                "error",
                "size_mismatch",
                where,
                f"the file is {actual[0]}x{actual[1]}, the JSON says {width}x{height}",
            )
            continue
        image["_ok"] = (_is_int(width) and width > 0) and (_is_int(height) and height > 0)
    return images


def _check_annotations(
    records: Any,
    images: dict[int, dict[str, Any]],
    categories: dict[int, dict[str, Any]],
    report: SplitReport,
) -> list[dict[str, Any]]:
    """Check each annotation; return the repaired ones that a fix keeps."""
    kept: list[dict[str, Any]] = []
    seen: set[int] = set()
    for position, record in enumerate(records if isinstance(records, list) else []):
        if not isinstance(record, dict):
            report.add("error", "bad_annotation", f"annotation #{position}", "not an object")
            continue
        annotation_id = record.get("id")
        where = (
            f"annotation id {annotation_id}"
            if _is_int(annotation_id)
            else (f"annotation #{position}")
        )
        if _is_int(annotation_id) and annotation_id in seen:
            report.add("error", "duplicate_id", where, "annotation id appears twice")
        seen.add(annotation_id)
        image = images.get(record.get("image_id"))
        if image is None:
            report.add(
                "error",
                "unknown_image",
                where,
                f"image id {record.get('image_id')!r} is not in 'images'",
            )
            continue
        where = f"{where} ({_image_record(image)})"
        if record.get("category_id") not in categories:
            report.add(
                "error",
                "unknown_category",
                where,
                f"category id {record.get('category_id')!r} is not in 'categories'",
            )
            continue
        if not image["_ok"]:
            continue  # the image's own problem is reported; its annotations go with it
        repaired = check_geometry(record, image["width"], image["height"], where, report)
        if repaired is not None:
            kept.append(repaired)
    return kept


def _fixed_copy(
    data: dict[str, Any],
    images: dict[int, dict[str, Any]],
    categories: dict[int, dict[str, Any]],
    annotations: list[dict[str, Any]],
) -> dict[str, Any]:
    kept_images = [
        {k: v for k, v in image.items() if k != "_ok"} for image in images.values() if image["_ok"]
    ]
    kept_ids = {image["id"] for image in kept_images}
    fixed_annotations = []
    for number, annotation in enumerate(
        (a for a in annotations if a["image_id"] in kept_ids), start=1
    ):
        annotation = dict(annotation, id=number)
        annotation.setdefault("iscrowd", 0)
        if not isinstance(annotation.get("area"), int | float) or not math.isfinite(
            annotation["area"]
        ):
            annotation["area"] = annotation["bbox"][2] * annotation["bbox"][3]
        fixed_annotations.append(annotation)
    fixed = {k: v for k, v in data.items() if k not in ("images", "annotations", "categories")}
    fixed.update(
        images=kept_images, annotations=fixed_annotations, categories=list(categories.values())
    )
    return fixed


def _image_record(image: dict[str, Any]) -> str:
    return f"image id {image.get('id')} {str(image.get('file_name'))!r}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
