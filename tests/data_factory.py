"""Tiny datasets built in code for the data tests (no binary fixtures needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BAD_DATA = Path(__file__).resolve().parent / "data" / "bad"


def shared_data(relative: str) -> Path:
    """A folder of the shared real-data set, or skip the test when it is absent."""
    import pytest

    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"shared data {path} not available")
    return path


def write_image(path: Path, width: int = 32, height: int = 24, mode: str = "RGB") -> Path:
    """A small noise image of the given size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    array = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(array).convert(mode).save(path)
    return path


def square_polygon(x: float, y: float, size: float) -> list[float]:
    return [x, y, x + size, y, x + size, y + size, x, y + size]


def coco_dict(**overrides: Any) -> dict[str, Any]:
    """A valid two-image COCO dict: a polygon square, a two-part polygon, an RLE and a box-only."""
    data: dict[str, Any] = {
        "images": [
            {"id": 0, "file_name": "a.png", "width": 32, "height": 24},
            {"id": 7, "file_name": "b.png", "width": 32, "height": 24},
        ],
        "categories": [
            {"id": 1, "name": "cat", "prompt": "a cat", "synonyms": ["kitty"]},
            {"id": 2, "name": "dog"},
        ],
        "annotations": [
            {
                "id": 10,
                "image_id": 0,
                "category_id": 1,
                "bbox": [4, 4, 8, 8],
                "segmentation": [square_polygon(4, 4, 8)],
                "area": 64,
                "iscrowd": 0,
            },
            {
                "id": 11,
                "image_id": 0,
                "category_id": 2,
                "bbox": [2, 14, 26, 6],
                "segmentation": [square_polygon(2, 14, 6), square_polygon(22, 14, 6)],
                "area": 72,
                "iscrowd": 0,
            },
            {
                "id": 904600516168,
                "image_id": 7,
                "category_id": 1,
                "bbox": [0, 0, 2, 24],
                "segmentation": {"size": [24, 32], "counts": [0, 48, 720]},
                "area": 48,
                "iscrowd": 1,
            },
            {"id": 13, "image_id": 7, "category_id": 2, "bbox": [10, 5, 10, 5], "area": 50},
        ],
    }
    data.update(overrides)
    return data


def write_coco(folder: Path, data: dict[str, Any] | None = None, images: bool = True) -> Path:
    """Write ``data`` (default :func:`coco_dict`) as ``_annotations.coco.json`` with its images."""
    folder.mkdir(parents=True, exist_ok=True)
    data = coco_dict() if data is None else data
    if images:
        for image in data["images"]:
            write_image(folder / image["file_name"], image["width"], image["height"])
    path = folder / "_annotations.coco.json"
    path.write_text(json.dumps(data))
    return path


def assert_mask_within_a_pixel(actual: np.ndarray, expected: np.ndarray) -> None:
    """Every differing pixel lies on the expected mask's one-pixel boundary band."""
    from scipy import ndimage

    assert actual.shape == expected.shape
    band = ndimage.binary_dilation(expected) & ~ndimage.binary_erosion(expected)
    differing = actual ^ expected
    assert not (differing & ~band).any(), f"{int((differing & ~band).sum())} pixels off"


def assert_box_within_a_pixel(actual: np.ndarray, expected: list[float] | np.ndarray) -> None:
    np.testing.assert_allclose(np.asarray(actual, dtype=float), expected, atol=1.0)


def polygon_mask(polygon: list[float], width: int, height: int) -> np.ndarray:
    """Rasterise one COCO polygon with pycocotools (the reference for round trips)."""
    from sam3_lora.data.coco import decode_segmentation

    return decode_segmentation([polygon], height, width)


def encode_brush_rle(values: np.ndarray) -> list[int]:
    """Label Studio's brush RLE of flat uint8 RGBA ``values`` (runs, singles as literals)."""
    bits: list[str] = []

    def put(value: int, size: int) -> None:
        bits.append(format(value, f"0{size}b"))

    sizes = [3, 4, 8, 16]
    flat = np.asarray(values, dtype=np.uint8).ravel()
    put(flat.size, 32)
    put(7, 5)  # word size 8
    for size in sizes:
        put(size - 1, 4)
    starts = np.flatnonzero(np.concatenate([[True], flat[1:] != flat[:-1]]))
    lengths = np.diff(np.concatenate([starts, [flat.size]]))
    position = 0
    for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
        assert start == position
        while length > 0:
            chunk = min(length, 1 << 16)
            kind = next(k for k, s in enumerate(sizes) if chunk - 1 < (1 << s))
            if chunk == 1:  # a literal block of one word exercises the other branch
                put(0, 1)
            else:
                put(1, 1)
            put(kind, 2)
            put(chunk - 1, sizes[kind])
            put(int(flat[position]), 8)
            position += chunk
            length -= chunk
    text = "".join(bits)
    text += "0" * (-len(text) % 8)
    return [int(text[i : i + 8], 2) for i in range(0, len(text), 8)]
