"""YOLO labels (segmentation polygons or boxes, normalised to 0..1) -> COCO.

Images are paired with labels by Ultralytics' rule (``.../images/...`` -> ``.../labels/...``),
also for renamed folders (``images_1st_500`` -> ``labels_1st_500``), then by a label beside
the image, then by a unique file stem anywhere under the folder.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import yaml
from tqdm import tqdm

from sam3_lora.data.convert.writer import CocoWriter, ConversionResult, normalize_split
from sam3_lora.data.images import is_image_file
from sam3_lora.errors import DatasetError

logger = logging.getLogger(__name__)

SPLIT_FOLDERS = ("train", "valid", "val", "validation", "test")
_TOLERANCE = 0.01  # normalised coordinates may overshoot 0..1 by this much (rounding)


def load_class_names(
    classes: str | list[str] | None = None,
    data_yaml: str | Path | None = None,
    yolo_dir: str | Path | None = None,
) -> list[str] | None:
    """Class names from ``--classes``, a ``data.yaml``, or one found in / above ``yolo_dir``."""
    if classes:
        names = classes.split(",") if isinstance(classes, str) else list(classes)
        return [name.strip() for name in names if name.strip()]
    if data_yaml is None and yolo_dir is not None:
        root = Path(yolo_dir)
        for folder in (root, root.parent):
            for name in ("data.yaml", "dataset.yaml", "data.yml"):
                if (folder / name).is_file():
                    data_yaml = folder / name
                    break
            if data_yaml is None and (folder / "classes.txt").is_file():
                text = (folder / "classes.txt").read_text(encoding="utf-8")
                return [line.strip() for line in text.splitlines() if line.strip()]
            if data_yaml is not None:
                break
    if data_yaml is None:
        return None
    return _names_from_yaml(Path(data_yaml))


def convert_yolo(
    yolo_dir: str | Path,
    output_dir: str | Path,
    split: str | None = "train",
    *,
    classes: str | list[str] | None = None,
    data_yaml: str | Path | None = None,
    image_mode: str = "copy",
) -> list[ConversionResult]:
    """Convert every image under ``yolo_dir`` (with its label file, if any) into COCO.

    With ``split=None`` and ``train/``, ``valid/`` (or ``val/``) and ``test/`` sub-folders, each
    keeps its split; otherwise everything goes to ``split``. Images without a label file are kept
    as negatives (no objects), as in Ultralytics.
    """
    root = Path(yolo_dir)
    if not root.is_dir():
        raise DatasetError(f"YOLO folder {root} does not exist")
    names = load_class_names(classes, data_yaml, root)
    if names is None:
        logger.warning("no class names (--classes, data.yaml or classes.txt): using class_<id>")
    groups = _split_groups(root, split)
    results = []
    for split_name, folder in groups:
        results.append(_convert_folder(folder, output_dir, split_name, names, image_mode))
    return results


def _convert_folder(
    folder: Path, output_dir: str | Path, split: str, names: list[str] | None, image_mode: str
) -> ConversionResult:
    images = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
    labels = sorted(p for p in folder.rglob("*.txt") if _is_label_file(p))
    if not images:
        raise DatasetError(f"no images found under {folder} (looked for jpg, png, bmp, tif, webp)")
    label_of = _pair_labels(images, labels)
    writer = CocoWriter(output_dir, split, image_mode=image_mode)
    for name in names or []:
        writer.category_id(name)
    used = set(label_of.values())
    for image_path in tqdm(images, desc=f"yolo {split}", unit="img", leave=False):
        image_id = writer.add_image(image_path)
        label = label_of.get(image_path)
        if label is not None:
            _add_label_file(writer, image_id, label, names)
    orphans = [label for label in labels if label not in used]
    if orphans:
        writer.warn(f"{len(orphans)} label files have no image, e.g. {orphans[0]}")
    if writer.result.box_only:
        writer.warn(
            f"{writer.result.box_only} annotations in {folder} are boxes only: masks are missing, "
            "so only box prompts / detection can be trained on them"
        )
    return writer.write()


def _add_label_file(
    writer: CocoWriter, image_id: int, label: Path, names: list[str] | None
) -> None:
    width, height = writer.image_size(image_id)
    try:
        text = label.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DatasetError(f"{label} is not UTF-8 text ({error}); is it a label file?") from None
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        where = f"{label}, line {number}"
        class_index, values = _parse_line(tokens, where)
        if names is not None and class_index >= len(names):
            raise DatasetError(
                f"{where}: class {class_index} but only {len(names)} class names are known "
                f"({', '.join(names)}); fix --classes or data.yaml"
            )
        name = names[class_index] if names is not None else f"class_{class_index}"
        category_id = writer.category_id(name)
        if len(values) == 4:
            cx, cy, w, h = values
            box = [(cx - w / 2) * width, (cy - h / 2) * height]
            box += [(cx + w / 2) * width, (cy + h / 2) * height]
            writer.add_annotation(image_id, category_id, bbox_xyxy=box)
        else:
            polygon = [v * (width if i % 2 == 0 else height) for i, v in enumerate(values)]
            writer.add_annotation(image_id, category_id, polygons=[polygon])


def _parse_line(tokens: list[str], where: str) -> tuple[int, list[float]]:
    try:
        class_value = float(tokens[0])
        values = [float(token) for token in tokens[1:]]
    except ValueError:
        raise DatasetError(f"{where}: expected numbers, got {' '.join(tokens)[:80]!r}") from None
    if not class_value.is_integer() or class_value < 0:
        raise DatasetError(f"{where}: class id {tokens[0]!r} must be a non-negative integer")
    if len(values) != 4 and (len(values) < 6 or len(values) % 2):
        raise DatasetError(
            f"{where}: {len(values)} coordinates; a YOLO line is 'class cx cy w h' (box) or "
            "'class x1 y1 x2 y2 x3 y3 ...' (polygon of 3 or more points)"
        )
    if not all(math.isfinite(v) for v in values):
        raise DatasetError(f"{where}: NaN or infinite coordinate")
    if any(v < -_TOLERANCE or v > 1 + _TOLERANCE for v in values):
        raise DatasetError(
            f"{where}: coordinates must be normalised to 0..1 (got {max(values, key=abs):g}); "
            "these look like pixels: divide by the image width / height"
        )
    values = [min(max(v, 0.0), 1.0) for v in values]
    if len(values) == 4 and (values[2] <= 0 or values[3] <= 0):
        raise DatasetError(f"{where}: box width and height must be positive")
    return int(class_value), values


def _split_groups(root: Path, split: str | None) -> list[tuple[str, Path]]:
    if split is not None:
        return [(normalize_split(split), root)]
    found = [(normalize_split(p.name), p) for p in sorted(root.iterdir()) if p.is_dir()]
    groups = [(name, path) for name, path in found if path.name.lower() in SPLIT_FOLDERS]
    return groups or [("train", root)]


def _pair_labels(images: list[Path], labels: list[Path]) -> dict[Path, Path]:
    label_set = set(labels)
    by_stem: dict[str, list[Path]] = {}
    for label in labels:
        by_stem.setdefault(label.stem, []).append(label)
    pairs = {}
    for image in images:
        for candidate in _label_candidates(image):
            if candidate in label_set:
                pairs[image] = candidate
                break
        else:
            same_stem = by_stem.get(image.stem, [])
            if len(same_stem) == 1:
                pairs[image] = same_stem[0]
    return pairs


def _label_candidates(image: Path) -> list[Path]:
    parts = list(image.with_suffix(".txt").parts)
    candidates = []
    for i in range(len(parts) - 2, -1, -1):
        if parts[i].lower().startswith("images"):
            swapped = [*parts[:i], "labels" + parts[i][len("images") :], *parts[i + 1 :]]
            candidates.append(Path(*swapped))
            break
    candidates.append(image.with_suffix(".txt"))
    return candidates


def _is_label_file(path: Path) -> bool:
    name = path.name.lower()
    return not (name.startswith("readme") or name in ("classes.txt", "labels.txt"))


def _names_from_yaml(path: Path) -> list[str]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"data.yaml {path} does not exist") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path} is not valid YAML: {error}") from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        try:
            ordered = sorted((int(k), str(v)) for k, v in names.items())
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: 'names' keys must be class indices 0, 1, ...") from None
        if [k for k, _ in ordered] != list(range(len(ordered))):
            raise DatasetError(f"{path}: 'names' indices must be 0..{len(ordered) - 1}")
        return [v for _, v in ordered]
    if isinstance(names, list) and names:
        return [str(name) for name in names]
    raise DatasetError(
        f"{path} has no 'names' list; add `names: [cat, dog]` or pass --classes \"cat,dog\""
    )
