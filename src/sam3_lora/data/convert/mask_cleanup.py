"""Clean label masks before they become instances: lossy files, near colours, specks.

* **Lossy input.** A JPEG file, or a binary mask whose histogram is mostly 0 and 255 with many
  values near both (compression noise, soft edges), is binarised at ``threshold`` (mid-grey).
* **Near colours.** Colour masks map each pixel to the nearest colour of the label map within
  ``tolerance`` (Euclidean RGB distance); lossy masks without a label map snap to their own dominant
  values. Pixels near none are *unmatched*: counted, and part of no object.
* **Specks.** Connected components smaller than ``min_area`` pixels are dropped and counted;
  :func:`default_min_area` scales that floor with the image.

Each change is recorded in a :class:`MaskFixes` so that the converter can name the file in one
warning. Pillow reads the files (palette PNGs as indices); the rest is numpy / scipy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from sam3_lora.errors import DatasetError

UNMATCHED = -1  # label of pixels that belong to no object (unmatched colours)
DEFAULT_THRESHOLD = 128
DEFAULT_TOLERANCE = 32.0
LOSSY_FORMATS = ("JPEG", "MPO")
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
_NEAR = 64  # "near 0" is 1..63, "near 255" is 192..254


@dataclass
class MaskFixes:
    """What one mask file needed; :meth:`message` is None when it was clean."""

    path: Path
    lossy: str | None = None
    threshold: int | None = None
    snapped: int = 0
    unmatched: int = 0
    unmatched_colours: list[tuple[str, int]] = field(default_factory=list)
    dropped: int = 0
    dropped_pixels: int = 0
    min_area: int = 0
    notes: list[str] = field(default_factory=list)

    def message(self) -> str | None:
        parts = []
        if self.lossy:
            parts.append(f"lossy ({self.lossy})")
        if self.threshold is not None:
            parts.append(f"binarised at {self.threshold}")
        if self.snapped:
            parts.append(f"{self.snapped} pixels snapped to the nearest label value")
        if self.unmatched:
            shown = ", ".join(f"{c} x{n}" for c, n in self.unmatched_colours[:3])
            parts.append(f"{self.unmatched} pixels match no label-map colour ({shown}); left out")
        if self.dropped:
            parts.append(
                f"{self.dropped} components under {self.min_area} px dropped "
                f"({self.dropped_pixels} px)"
            )
        parts += self.notes
        return f"mask {self.path}: " + "; ".join(parts) if parts else None


def default_min_area(width: int, height: int) -> int:
    """10 px up to 0.5 Mpx, then 20 px per Mpx (41 px at 1920x1080, 166 px at 4K)."""
    return max(10, round(width * height * 2e-5))


def read_mask(path: Path) -> tuple[np.ndarray, str | None]:
    """A mask file's pixels (palette PNGs as indices, ``1`` / ``LA`` as gray) and its format."""
    try:
        with Image.open(path) as image:
            image.load()
            mode, image_format = image.mode, image.format
            if mode in ("LA", "1", "PA"):
                image = image.convert("L") if mode != "PA" else image.getchannel(0)
            array = np.asarray(image)
    except (OSError, ValueError, SyntaxError) as error:
        raise DatasetError(f"mask {path} cannot be read ({error}); re-export it as PNG") from None
    if mode == "1":
        array = (array > 0).astype(np.uint8)
    if array.ndim == 3:
        array = array[..., :3]
    return array, image_format


def lossy_reason(array: np.ndarray, image_format: str | None, binary: bool) -> str | None:
    """Why a mask looks lossy (JPEG, or a noisy 0/255 histogram for binary masks), or None."""
    if image_format in LOSSY_FORMATS:
        return "JPEG"
    if binary and array.dtype == np.uint8 and _noisy_binary_histogram(to_gray(array)):
        return "many values near 0 and 255: compression noise or soft edges"
    return None


def to_gray(array: np.ndarray) -> np.ndarray:
    """A 2-D gray view of a mask (RGB through Pillow's luminance)."""
    if array.ndim == 2:
        return array
    return np.asarray(Image.fromarray(array.astype(np.uint8)).convert("L"))


def binarise(gray: np.ndarray, threshold: int, background: int) -> np.ndarray:
    """Foreground of a binary mask: the side of ``threshold`` that the background is not on."""
    bright = gray >= threshold
    return ~bright if background >= threshold else bright


def snap_colours(
    array: np.ndarray, colours: list[tuple[int, int, int]], tolerance: float, fixes: MaskFixes
) -> np.ndarray:
    """RGB pixels -> index of the nearest ``colours`` entry within ``tolerance``, else UNMATCHED."""
    packed = pack_rgb(array)
    unique, inverse = np.unique(packed, return_inverse=True)
    rgb = np.stack([unique >> 16, (unique >> 8) & 255, unique & 255], axis=1).astype(np.float64)
    table = np.asarray(colours, dtype=np.float64)
    distance = np.sqrt(((rgb[:, None, :] - table[None, :, :]) ** 2).sum(axis=2))
    nearest = distance.argmin(axis=1)
    best = distance[np.arange(len(unique)), nearest]
    labels = np.where(best <= tolerance, nearest, UNMATCHED)
    counts = np.bincount(inverse.ravel(), minlength=len(unique))
    fixes.snapped += int(counts[(best > 0) & (best <= tolerance)].sum())
    missed = np.flatnonzero(labels == UNMATCHED)
    fixes.unmatched += int(counts[missed].sum())
    for index in missed[np.argsort(-counts[missed])][:3]:
        value = int(unique[index])
        fixes.unmatched_colours.append(
            (f"({value >> 16}, {(value >> 8) & 255}, {value & 255})", int(counts[index]))
        )
    return labels[inverse].reshape(packed.shape).astype(np.int64)


def snap_to_dominant(
    values: np.ndarray, tolerance: float, min_count: int, fixes: MaskFixes
) -> np.ndarray:
    """Gray / RGB values -> the mask's own dominant values (histogram peaks, ``tolerance`` apart).

    Returns gray values (2-D input) or packed RGB (``r << 16 | g << 8 | b``); pixels far from
    every peak become UNMATCHED.
    """
    flat = values.astype(np.int64) if values.ndim == 2 else pack_rgb(values)
    unique, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    points = _as_points(unique, values.ndim == 3)
    peaks: list[int] = []
    for index in np.argsort(-counts, kind="stable"):
        if counts[index] < min_count and peaks:
            break
        if all(np.linalg.norm(points[index] - points[p]) > tolerance for p in peaks):
            peaks.append(int(index))
    peak_points = points[peaks]
    distance = np.sqrt(((points[:, None, :] - peak_points[None, :, :]) ** 2).sum(axis=2))
    nearest = distance.argmin(axis=1)
    best = distance[np.arange(len(unique)), nearest]
    mapped = np.where(best <= tolerance, unique[np.asarray(peaks)][nearest], UNMATCHED)
    fixes.snapped += int(counts[(best > 0) & (best <= tolerance)].sum())
    fixes.unmatched += int(counts[best > tolerance].sum())
    return mapped[inverse].reshape(flat.shape)


def drop_small_components(
    mask: np.ndarray, min_area: int, fixes: MaskFixes
) -> list[tuple[np.ndarray, tuple[slice, slice]]]:
    """The 8-connected components of ``mask`` with at least ``min_area`` pixels (with boxes)."""
    labels, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
    if count == 0:
        return []
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    kept = []
    for component, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        if sizes[component] < min_area:
            fixes.dropped += 1
            fixes.dropped_pixels += int(sizes[component])
            continue
        kept.append((labels == component, box))
    return kept


def remove_small_parts(mask: np.ndarray, min_area: int, fixes: MaskFixes) -> np.ndarray:
    """``mask`` without its components under ``min_area`` (one instance may have several parts)."""
    parts = drop_small_components(mask, min_area, fixes)
    if len(parts) == 1:
        return parts[0][0]
    result = np.zeros(mask.shape, dtype=bool)
    for part, _ in parts:
        result |= part
    return result


def pack_rgb(array: np.ndarray) -> np.ndarray:
    rgb = array[..., :3].astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _as_points(unique: np.ndarray, rgb: bool) -> np.ndarray:
    if not rgb:
        return unique.astype(np.float64)[:, None]
    return np.stack([unique >> 16, (unique >> 8) & 255, unique & 255], axis=1).astype(np.float64)


def _noisy_binary_histogram(gray: np.ndarray) -> bool:
    hist = np.bincount(gray.ravel(), minlength=256)
    extremes = int(hist[0] + hist[255])
    near_black = np.count_nonzero(hist[1:_NEAR])
    near_white = np.count_nonzero(hist[256 - _NEAR : 255])
    return (
        hist[0] > 0
        and hist[255] > 0
        and extremes >= 0.5 * gray.size
        and near_black >= 2
        and near_white >= 2
    )
