"""Image files: safe paths inside a dataset, header-only sizes, and robust RGB loading."""

from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sam3_lora.errors import DatasetError

logger = logging.getLogger(__name__)

# Pillow's default (~89 Mpx) warns on large aerial / slide images that are legitimate training
# data. We accept up to 1 gigapixel (about 32k x 32k) and refuse anything larger as a likely
# decompression bomb; sizes are always read from the header first, so nothing big is decoded
# just to learn its size.
MAX_IMAGE_PIXELS = 1_000_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")

_EXIF_ORIENTATION = 0x0112
_ROTATED_ORIENTATIONS = {5, 6, 7, 8}  # orientations that swap width and height


def resolve_in_dataset(root: str | Path, relative: str | os.PathLike[str]) -> Path:
    """Join ``relative`` (a ``file_name`` from an annotation file) to ``root``, safely.

    Backslashes are read as separators (Windows exports). Absolute paths, ``..`` components and
    symlinks that lead outside ``root`` raise :class:`DatasetError` naming the path.
    """
    text = os.fspath(relative)
    if not text or "\x00" in text:
        raise DatasetError(f"invalid image path {text!r}: empty or contains a NUL byte")
    posix = text.replace("\\", "/")
    parts = PurePosixPath(posix)
    if parts.is_absolute() or (len(posix) > 1 and posix[1] == ":") or Path(text).is_absolute():
        raise DatasetError(
            f"image path {text!r} is absolute; file names in annotation files must be relative "
            f"to the dataset folder {root}"
        )
    if ".." in parts.parts:
        raise DatasetError(
            f"image path {text!r} contains '..' and would leave the dataset folder {root}; "
            "move the image inside the folder and use a relative file_name"
        )
    root_path = Path(root)
    candidate = root_path.joinpath(*[p for p in parts.parts if p not in ("", ".")])
    real_root = root_path.resolve()
    real = candidate.resolve()
    if real != real_root and real_root not in real.parents:
        raise DatasetError(
            f"image path {text!r} resolves to {real}, outside the dataset folder {real_root} "
            "(a symlink?); copy the image into the dataset instead of linking it"
        )
    return candidate


def read_image_size(path: str | Path) -> tuple[int, int]:
    """Return ``(width, height)`` as displayed (EXIF rotation applied) from the header only."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
            try:
                orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
            except Exception:  # a damaged EXIF block must not hide the size
                orientation = 1
    except FileNotFoundError as error:
        raise DatasetError(f"image {path} does not exist") from error
    except Image.DecompressionBombError as error:
        raise DatasetError(_too_large_message(path, error)) from error
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise DatasetError(
            f"image {path} cannot be read ({error}); re-export or remove it"
        ) from error
    if orientation in _ROTATED_ORIENTATIONS:
        return height, width
    return width, height


def load_image_rgb(path: str | Path, max_side: int | None = None) -> Image.Image:
    """Load an image as 8-bit RGB with its EXIF orientation applied.

    Grayscale, palette, alpha (composited on black), 16-bit and float images are converted.
    ``max_side`` bounds the longer side: JPEGs are then decoded at reduced scale (``draft``), so a
    huge image is never held in memory at full resolution.
    Raises :class:`DatasetError` for missing, truncated or unreadable files.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            if max_side is not None and image.format == "JPEG":
                image.draft("RGB", (max_side, max_side))
            image.load()
            image = ImageOps.exif_transpose(image)
            if max_side is not None and max(image.size) > max_side:
                image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
            return to_rgb8(image)
    except FileNotFoundError as error:
        raise DatasetError(f"image {path} does not exist") from error
    except Image.DecompressionBombError as error:
        raise DatasetError(_too_large_message(path, error)) from error
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        truncated = "truncated" in str(error).lower()
        hint = (
            "the file is truncated; re-download or re-export it"
            if truncated
            else ("re-export it as PNG or JPEG or remove it")
        )
        raise DatasetError(f"image {path} cannot be decoded ({error}): {hint}") from error


def to_rgb8(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (high bit depths are rescaled, alpha on black)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        gray = Image.fromarray(_scale_to_uint8(np.asarray(image)), mode="L")
        return gray.convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    elif mode == "P":
        return image.convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _scale_to_uint8(array: np.ndarray) -> np.ndarray:
    """Map a high bit depth or float array to uint8.

    Integers are divided by the smallest bit depth (8, 10, 12, 14, 16, 32 bits) that holds their
    maximum, so 12-bit sensor data is not left almost black; floats in [0, 1] are scaled by 255,
    other floats are min-max stretched.
    """
    values = array.astype(np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(array.shape, dtype=np.uint8)
    low, high = float(finite.min()), float(finite.max())
    if np.issubdtype(array.dtype, np.floating):
        if low >= 0.0 and high <= 1.0:
            scaled = values * 255.0
        else:
            scaled = (values - low) / max(high - low, 1e-12) * 255.0
    else:
        bits = next((b for b in (8, 10, 12, 14, 16) if high < 2**b), 32)
        scaled = values * (255.0 / (2**bits - 1)) if low >= 0 else (values - low)
        if low < 0:
            scaled = scaled / max(high - low, 1.0) * 255.0
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _too_large_message(path: Path, error: Exception) -> str:
    megapixels = MAX_IMAGE_PIXELS / 1e6
    return (
        f"image {path} is larger than the {megapixels:.0f} Mpx limit ({error}); tile or "
        "downscale it before training"
    )


def is_image_file(path: Path) -> bool:
    """True when the suffix is a supported image extension (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def format_bytes_name(name: str) -> str:
    """A printable form of a file name that may hold undecodable (surrogate-escaped) bytes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "is_image_file",
    "load_image_rgb",
    "read_image_size",
    "resolve_in_dataset",
    "to_rgb8",
]
