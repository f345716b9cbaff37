"""Mask images -> COCO instances (RLE).

Mask images are paired with images by file stem (``a.jpg`` with ``a.png`` / ``a_mask.png`` ...):
  * ``binary``: every pixel that is not ``background`` is object; objects are connected
    components. A folder per class (``masks/<class>/<stem>.png``) gives one class each.
  * ``semantic``: pixel value = class index (palette PNGs are read as indices, not colours);
    each class's connected components become instances.
  * ``instance``: pixel value (or RGB colour) = object id; each id is one instance, classed by
    the majority value of an optional semantic mask (``class_masks_dir``).
``ignore_value`` pixels (VOC's 255) belong to no object; binary masks have none by default, as
their objects are usually 255. A CVAT ``labelmap.txt`` maps RGB colours to classes.

Lossy masks (JPEG, noisy 0/255 histograms) are binarised at ``threshold``, colours snap to the
label map within ``tolerance`` and components under ``min_area`` pixels are dropped (see
:mod:`~sam3_lora.data.convert.mask_cleanup`); a warning names each file that needed any of it.
Run-length CSVs live in :mod:`~sam3_lora.data.convert.rle_csv` (re-exported here).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sam3_lora.data.convert import mask_cleanup as cleanup
from sam3_lora.data.convert.mask_cleanup import UNMATCHED, MaskFixes
from sam3_lora.data.convert.rle_csv import convert_rle_csv, rle_to_coco_counts
from sam3_lora.data.convert.writer import CocoWriter, ConversionResult
from sam3_lora.data.images import is_image_file
from sam3_lora.errors import DatasetError

logger = logging.getLogger(__name__)

MASK_TYPES = ("binary", "semantic", "instance")
MASK_SUFFIXES = ("", "_mask", "_masks", "-mask", "_label", "_labels", "_seg", "_gt")
AUTO = "auto"

__all__ = ["convert_masks", "convert_rle_csv", "load_class_names", "rle_to_coco_counts"]


@dataclass
class MaskOptions:
    """How mask pixels are read: see :func:`convert_masks` for each field."""

    mask_type: str = "binary"
    colours: list[tuple[int, int, int]] | None = None
    background: int = 0
    ignore_value: int | None = None
    threshold: int = cleanup.DEFAULT_THRESHOLD
    tolerance: float = cleanup.DEFAULT_TOLERANCE
    min_area: int | None = None

    def floor(self, width: int, height: int) -> int:
        return cleanup.default_min_area(width, height) if self.min_area is None else self.min_area


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
    ignore_value: int | str | None = AUTO,
    min_area: int | None = None,
    threshold: int = cleanup.DEFAULT_THRESHOLD,
    tolerance: float = cleanup.DEFAULT_TOLERANCE,
    image_mode: str = "copy",
) -> ConversionResult:
    """Convert images + mask images into COCO instances (see the module docstring).

    Args:
        ignore_value: pixel value of no object; ``"auto"``: 255 for semantic / instance masks,
            none for binary masks.
        min_area: smallest component kept (pixels); None scales it with the image
            (:func:`~sam3_lora.data.convert.mask_cleanup.default_min_area`).
        threshold: gray level that binarises lossy binary masks.
        tolerance: RGB distance within which a colour snaps to the label map.
    """
    if mask_type not in MASK_TYPES:
        raise DatasetError(f"mask type {mask_type!r} is not one of {MASK_TYPES}")
    if ignore_value == AUTO:
        ignore_value = None if mask_type == "binary" else 255
    options = MaskOptions(
        mask_type=mask_type,
        colours=colours,
        background=background,
        ignore_value=None if ignore_value is None else int(ignore_value),
        threshold=threshold,
        tolerance=tolerance,
        min_area=min_area,
    )
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
            fixes = MaskFixes(mask_path, min_area=options.floor(*size))
            if mask_type == "binary":
                name = label or (classes[0] if classes else class_name)
                foreground = binary_foreground(mask_path, options, size, fixes)
                _add_parts(writer, image_id, foreground, writer.category_id(name), fixes)
            else:
                values = label_values(mask_path, options, size, fixes)
                class_values = None
                if mask_type == "instance" and class_masks_dir is not None:
                    class_path = _find_mask(Path(class_masks_dir), image_path.stem, cache)
                    if class_path is None:
                        raise DatasetError(
                            f"no class mask for {image_path.stem} in {class_masks_dir}"
                        )
                    class_fixes = MaskFixes(class_path, min_area=fixes.min_area)
                    class_values = label_values(class_path, options, size, class_fixes)
                    report_fixes(writer, class_fixes)
                _add_labelled(
                    writer, image_id, values, class_values, classes, class_name, options, fixes
                )
            report_fixes(writer, fixes)
    if writer.result.images and not writer.result.annotations:
        writer.warn(
            f"no objects found in any mask under {masks_root}; check --mask_type, --background "
            "and --ignore_value"
        )
    return writer.write()


def binary_foreground(
    path: Path, options: MaskOptions, size: tuple[int, int], fixes: MaskFixes
) -> np.ndarray:
    """Object pixels of a binary mask: binarised when lossy, else everything not background."""
    array, image_format = cleanup.read_mask(path)
    _check_size(path, array, size)
    reason = cleanup.lossy_reason(array, image_format, binary=True)
    if reason:
        fixes.lossy, fixes.threshold = reason, options.threshold
        gray = cleanup.to_gray(array)
        foreground = cleanup.binarise(gray, options.threshold, options.background)
        if not foreground.any() and gray.max() > 0:
            fixes.notes.append(
                f"no pixel reaches --mask_threshold {options.threshold}; for a 0/1 mask pass "
                "--mask_threshold 1"
            )
    else:
        values = _distinct_ids(array)
        other = values != options.background
        foreground = other & (values != _ignore(options.ignore_value))
        if other.any() and not foreground.any():
            fixes.notes.append(
                f"every object pixel equals --ignore_value {options.ignore_value}: no objects; "
                "binary masks mark objects with that value, leave --ignore_value unset"
            )
    share = foreground.mean() if foreground.size else 0.0
    if share > 0.5:
        fixes.notes.append(
            f"objects cover {share:.0%} of the image; if the majority value is background, "
            "pass --background with it"
        )
    return foreground


def label_values(
    path: Path, options: MaskOptions, size: tuple[int, int] | None, fixes: MaskFixes
) -> np.ndarray:
    """Class indices / object ids of a semantic or instance mask (UNMATCHED for no label)."""
    array, image_format = cleanup.read_mask(path)
    _check_size(path, array, size)
    if array.ndim == 3 and options.colours is not None:
        return cleanup.snap_colours(array, options.colours, options.tolerance, fixes)
    reason = cleanup.lossy_reason(array, image_format, binary=False)
    if reason is None:
        return _distinct_ids(array)
    fixes.lossy = reason
    floor = fixes.min_area or cleanup.default_min_area(array.shape[1], array.shape[0])
    snapped = cleanup.snap_to_dominant(array, options.tolerance, floor, fixes)
    if array.ndim == 2:
        return snapped
    ids = _ids_of_packed(np.where(snapped == UNMATCHED, 0, snapped))
    return np.where(snapped == UNMATCHED, UNMATCHED, ids)


def _add_labelled(
    writer: CocoWriter,
    image_id: int,
    values: np.ndarray,
    class_values: np.ndarray | None,
    classes: list[str] | None,
    class_name: str,
    options: MaskOptions,
    fixes: MaskFixes,
) -> None:
    for value in _object_values(values, options.background, options.ignore_value):
        if options.mask_type == "semantic":
            category = writer.category_id(_class_of(value, classes))
            _add_parts(writer, image_id, values == value, category, fixes)
            continue
        mask = cleanup.remove_small_parts(values == value, fixes.min_area, fixes)
        if not mask.any():
            continue
        name = class_name
        if class_values is not None:
            majority = _majority(class_values[mask], options.background, options.ignore_value)
            name = _class_of(majority, classes)
        writer.add_annotation(image_id, writer.category_id(name), mask=mask)


def _add_parts(
    writer: CocoWriter, image_id: int, foreground: np.ndarray, category_id: int, fixes: MaskFixes
) -> None:
    for part, _ in cleanup.drop_small_components(foreground, fixes.min_area, fixes):
        writer.add_annotation(image_id, category_id, mask=part)


def report_fixes(writer: CocoWriter, fixes: MaskFixes) -> None:
    """Count a mask's dropped components and warn, naming the file, when it needed fixes."""
    writer.result.dropped += fixes.dropped
    message = fixes.message()
    if message:
        writer.warn(message)


def _check_size(path: Path, array: np.ndarray, expected: tuple[int, int] | None) -> None:
    if expected is not None and (array.shape[1], array.shape[0]) != tuple(expected):
        raise DatasetError(
            f"mask {path} is {array.shape[1]}x{array.shape[0]} but its image is "
            f"{expected[0]}x{expected[1]}; masks must have the image's size"
        )


def _distinct_ids(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        return array.astype(np.int64)
    return _ids_of_packed(cleanup.pack_rgb(array))


def _ids_of_packed(packed: np.ndarray) -> np.ndarray:
    unique, inverse = np.unique(packed, return_inverse=True)
    ids = np.arange(len(unique)) + (0 if unique[0] == 0 else 1)
    return ids[inverse].reshape(packed.shape)


def _object_values(values: np.ndarray, background: int, ignore_value: int | None) -> list[int]:
    skip = (background, _ignore(ignore_value), UNMATCHED)
    return [int(v) for v in np.unique(values) if v not in skip]


def _majority(values: np.ndarray, background: int, ignore_value: int | None) -> int:
    keep = values[(values != background) & (values != _ignore(ignore_value)) & (values >= 0)]
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
