"""Synthetic steel-surface defects written as COCO: the ``steel`` style of synthetic data.

A domain the shapes of :mod:`sam3_lora.data.synthetic` never show, modelled on steel-strip
inspection images (Severstal): grey brushed-metal backgrounds (streaks along the rolling
direction, an illumination gradient, grain) with two kinds of defects,

- ``scratch`` (id 1): a thin, long, slightly curved line (2-4 px at 128 px), a little darker or
  brighter than the metal around it;
- ``blob`` (id 2): an irregular pit or stain, darker than the metal.

Defects keep the texture under them (the metal's pixels shifted by the defect's contrast), so
their edges are only as sharp as the contrast. Later defects occlude earlier ones; a defect left
with less than 30 % of its pixels (or fewer than 12) is dropped. Every image is drawn from
``numpy.random.default_rng([seed, STYLE_ID, split, index])``: the same arguments give identical
files. The folder layout and ``synth_params.json`` are those of the shapes datasets.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sam3_lora.data.synthetic import (
    ShapeInstance,
    SyntheticLayout,
    _is_complete,
    coco_categories,
    write_synthetic_dataset,
)
from sam3_lora.errors import ConfigError

logger = logging.getLogger(__name__)

STYLE = "steel"
STYLE_ID = 17  # in the seed sequence, apart from the shapes styles' 0 and 1
CATEGORIES = ("scratch", "blob")
GENERATOR_VERSION = 1
MIN_VISIBLE_FRACTION = 0.3
MIN_VISIBLE_PIXELS = 12


def generate_steel_dataset(
    output_dir: str | Path,
    num_train: int = 200,
    num_val: int = 50,
    seed: int = 0,
    image_size: int = 128,
    defects_per_image: tuple[int, int] = (1, 3),
    progress: bool = True,
) -> Path:
    """Write a steel-defect dataset (``train/`` and ``valid/`` with PNGs and
    ``_annotations.coco.json``, plus ``synth_params.json``) into ``output_dir``.

    A folder written before by a synthetic generator is overwritten; any other non-empty folder
    is refused.
    """
    params = _check_params(num_train, num_val, seed, image_size, defects_per_image)
    layout = SyntheticLayout(
        style_id=STYLE_ID,
        file_prefix="steel",
        description=f"sam3-lora synthetic steel defects (seed={seed})",
        categories=coco_categories(CATEGORIES, "defect"),
        draw=lambda rng: draw_steel_image(rng, image_size, defects_per_image),
    )
    return write_synthetic_dataset(Path(output_dir), params, layout, progress)


def ensure_steel_dataset(output_dir: str | Path, progress: bool = True, **kwargs: object) -> Path:
    """The dataset at ``output_dir``, generated only when it is missing or was generated with
    other arguments (those of :func:`generate_steel_dataset`)."""
    defaults = {"num_train": 200, "num_val": 50, "seed": 0, "image_size": 128}
    arguments = {**defaults, "defects_per_image": (1, 3), **kwargs}
    params = _check_params(**arguments)
    if _is_complete(Path(output_dir), params):
        logger.info("Reusing synthetic dataset %s", output_dir)
        return Path(output_dir)
    logger.info("Generating synthetic dataset %s", output_dir)
    return generate_steel_dataset(output_dir, **arguments, progress=progress)


def draw_steel_image(
    rng: np.random.Generator, image_size: int = 128, defects_per_image: tuple[int, int] = (1, 3)
) -> tuple[np.ndarray, list[ShapeInstance]]:
    """One image: uint8 ``[H, W, 3]`` pixels and its visible defects, bottom first."""
    metal = _metal_background(rng, image_size)
    count = int(rng.integers(defects_per_image[0], defects_per_image[1] + 1))
    labels = np.zeros((image_size, image_size), dtype=np.int16)
    drawn: list[tuple[str, np.ndarray, float]] = []
    for k in range(count):
        category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        mask = (
            _scratch_mask(rng, image_size) if category == "scratch" else _blob_mask(rng, image_size)
        )
        contrast = rng.uniform(28, 55) * (rng.choice([-1, 1]) if category == "scratch" else -1)
        labels[mask] = k + 1
        drawn.append((category, mask, float(contrast)))
    visible = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    pixels = metal.copy()
    instances = []
    for k, (category, mask, contrast) in enumerate(drawn):
        area = int(mask.sum())
        if visible[k] < max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * area):
            labels[labels == k + 1] = 0  # too hidden: left out, its pixels show the metal
            continue
        own = labels == k + 1
        pixels[own] = metal[own] + contrast
        instances.append(ShapeInstance(category, own, (0, 0, 0), area))
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8), instances


def _metal_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Float ``[H, W, 3]`` brushed steel: streaks along one axis, a gradient, grain, a tint."""
    level = rng.uniform(80, 170)
    streak_length = int(rng.integers(8, 33))
    coarse = rng.normal(0, rng.uniform(6, 14), size=(size, max(size // streak_length, 1)))
    streaks = np.asarray(
        Image.fromarray(coarse.astype(np.float32)).resize((size, size), Image.BILINEAR)
    )
    if rng.uniform() < 0.5:
        streaks = streaks.T  # rolled in the other direction
    ys, xs = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, 2 * np.pi)
    gradient = rng.uniform(10, 35) * ((xs - 0.5) * np.cos(angle) + (ys - 0.5) * np.sin(angle))
    grain = rng.normal(0, rng.uniform(2, 6), size=(size, size))
    grey = level + streaks + gradient + grain
    tint = np.array([1.0, 1.0 + rng.uniform(0, 0.02), 1.0 + rng.uniform(0.01, 0.05)])
    return grey[..., None] * tint


def _scratch_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """A thin polyline, 30-90 % of the image long, gently curved, 2-4 px wide at 128 px."""
    length = rng.uniform(0.3, 0.9) * size
    angle = rng.uniform(0, np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    centre = rng.uniform(0.2, 0.8, size=2) * size
    steps = np.linspace(-0.5, 0.5, 6)
    bend = rng.uniform(-0.12, 0.12) * length * (1 - (2 * steps) ** 2)
    points = centre + steps[:, None] * length * direction + bend[:, None] * normal
    width = max(1, round(rng.uniform(2, 4.5) * size / 128))
    canvas = Image.new("1", (size, size), 0)
    ImageDraw.Draw(canvas).line([tuple(p) for p in points], fill=1, width=width, joint="curve")
    return np.array(canvas, dtype=bool)


def _blob_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """An irregular closed shape (a radius with random low harmonics), 10-32 px at 128 px."""
    radius = rng.uniform(5, 16) * size / 128
    centre = rng.uniform(radius + 2, size - radius - 2, size=2)
    angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    radii = np.ones_like(angles)
    for harmonic in (2, 3, 5):
        radii += rng.uniform(0, 0.35 / harmonic * 2) * np.cos(
            harmonic * angles + rng.uniform(0, 6.3)
        )
    radii = radius * np.clip(radii, 0.3, None)
    points = centre + np.stack([np.cos(angles), np.sin(angles)], 1) * radii[:, None]
    canvas = Image.new("1", (size, size), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points], fill=1)
    return np.array(canvas, dtype=bool)


def _check_params(
    num_train: int,
    num_val: int,
    seed: int,
    image_size: int,
    defects_per_image: tuple[int, int] | list[int],
) -> dict[str, object]:
    for name, value, minimum in (("num_train", num_train, 1), ("num_val", num_val, 0)):
        if int(value) != value or value < minimum:
            raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}.")
    if int(seed) != seed or seed < 0:
        raise ConfigError(f"seed={seed!r} must be a non-negative integer.")
    if image_size < 64:
        raise ConfigError(f"image_size={image_size}: the steel style needs at least 64 pixels.")
    low, high = (int(v) for v in defects_per_image)
    if not 1 <= low <= high:
        raise ConfigError(f"defects_per_image={defects_per_image!r}: need 1 <= min <= max.")
    return {
        "generator_version": GENERATOR_VERSION,
        "style": STYLE,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "seed": int(seed),
        "image_size": int(image_size),
        "defects_per_image": [low, high],
    }
