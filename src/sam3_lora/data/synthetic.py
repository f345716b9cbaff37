"""Synthetic shapes datasets: circles, rectangles, triangles (and stars) written as COCO.

Two styles share the category ids 1-3 (circle, rectangle, triangle):

- ``plain``: vivid shapes (HSV saturation and value >= 0.55) on one plain random-colour
  background. Used to train the tiny SAM3 from scratch.
- ``shifted``: a domain the plain model has not seen, for the LoRA quickstart. Backgrounds are
  stripes, checkerboards, gradients or noise (two colours 40-80 apart in RGB: visible, yet
  below the shapes' own contrast); shape colours are muted or dark (the complement of
  the plain colour region); and a fourth category, ``star`` (id 4), appears.

``distractors`` adds shapes that are drawn but never annotated (e.g. ``("star",)`` in the plain
style): a model trained on them sees those shapes, learns that they are none of the named
categories, but is never told their name.

Shapes may overlap; each mask is the visible part of its shape (later shapes occlude earlier
ones), and the box and area are computed from that mask, so the three agree exactly. Placements
that would hide more than ``1 - MIN_VISIBLE_FRACTION`` of an earlier shape are re-drawn; an
instance that still ends up below that fraction is removed from the image. With 2-5 shapes drawn
from 3-4 types, many images lack some category, which gives absent prompts.

Every image is drawn from ``numpy.random.default_rng([seed, style, split, index])``, so the same
arguments give byte-identical annotation files and identical pixels.
"""

from __future__ import annotations

import colorsys
import inspect
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from tqdm import tqdm

from sam3_lora.data.jsonio import write_json
from sam3_lora.errors import ConfigError, DatasetError

logger = logging.getLogger(__name__)

STYLES = ("plain", "shifted")
PLAIN_SHAPES = ("circle", "rectangle", "triangle")
NEW_SHAPE = "star"
SHAPES_BY_STYLE = {"plain": PLAIN_SHAPES, "shifted": (*PLAIN_SHAPES, NEW_SHAPE)}
ALL_SHAPES = (*PLAIN_SHAPES, NEW_SHAPE)
SPLITS = ("train", "valid")
ANNOTATION_FILE = "_annotations.coco.json"
PARAMS_FILE = "synth_params.json"
GENERATOR_VERSION = 4  # bump when drawing changes, so ensure_shapes_dataset regenerates

# Default shape sizes at 256 px, scaled with the image: 40-110 px span 1.3-3.5 of the tiny
# SAM3's 28 px tokens at 224 px.
DEFAULT_SIZE_RANGE = (40, 110)
MIN_VISIBLE_FRACTION = 0.3  # of a shape's own area that must stay visible under later shapes
MIN_VISIBLE_PIXELS = 16
MIN_BACKGROUND_CONTRAST = 90.0  # RGB euclidean distance between a shape and its background
MIN_SHAPE_CONTRAST = 60.0  # ... between two shapes of one image
# The two colours of a shifted texture differ by this much: the texture stays visible, and
# below the shape contrast so that shapes are not camouflaged by it.
TEXTURE_CONTRAST = (40.0, 80.0)
GRAIN_MAX_STD = 8.0  # per-pixel noise of the noise texture, per channel
VIVID = 0.55  # plain colours have HSV saturation and value >= VIVID; shifted colours do not
_PLACEMENT_TRIES = 30
_COLOUR_TRIES = 100
_LAYOUT_TRIES = 20


@dataclass
class ShapeInstance:
    """One drawn shape: its category, visible mask and fill colour."""

    category: str
    mask: np.ndarray  # bool [H, W], visible part only
    colour: tuple[int, int, int]
    full_area: int  # pixels before occlusion


#: Draws one image from its generator: uint8 ``[H, W, 3]`` pixels and its instances, bottom first.
DrawImage = Callable[[np.random.Generator], tuple[np.ndarray, list[ShapeInstance]]]


@dataclass(frozen=True)
class SyntheticLayout:
    """How one synthetic generator seeds, names, draws and describes its images."""

    style_id: int  # second entry of every image's seed sequence
    file_prefix: str  # images are ``<file_prefix>_<index:05d>.png``
    description: str  # the COCO ``info.description``
    categories: list[dict[str, Any]]
    draw: DrawImage


def generate_shapes_dataset(
    output_dir: str | Path,
    num_train: int = 200,
    num_val: int = 50,
    seed: int = 0,
    style: str = "plain",
    image_size: int = 256,
    shapes_per_image: tuple[int, int] = (2, 5),
    size_range: tuple[int, int] | None = None,
    distractors: tuple[str, ...] = (),
    progress: bool = True,
) -> Path:
    """Write a synthetic shapes dataset in Roboflow COCO layout.

    Args:
        output_dir: Folder to create; gets ``train/`` and ``valid/`` with PNG images and
            ``_annotations.coco.json``, plus ``synth_params.json``. A folder previously written by
            this function is overwritten; any other non-empty folder is refused.
        num_train: Images in ``train/``.
        num_val: Images in ``valid/``.
        seed: Non-negative seed; the same arguments give identical files.
        style: ``"plain"`` or ``"shifted"`` (see the module docstring).
        image_size: Side of the square images, in pixels.
        shapes_per_image: Inclusive range of shapes per image.
        size_range: Inclusive range of shape sizes in pixels: circle diameter, rectangle sides,
            diameter of the circle around a triangle or star. None: ``DEFAULT_SIZE_RANGE``
            scaled by ``image_size / 256``.
        distractors: Shapes drawn among the others but not annotated (not categories).
        progress: Show a tqdm progress bar.

    Returns:
        ``output_dir`` as a Path.
    """
    params = _check_params(
        num_train, num_val, seed, style, image_size, shapes_per_image, size_range, distractors
    )
    size_range = tuple(params["size_range"])
    distractors = tuple(params.get("distractors", ()))
    layout = SyntheticLayout(
        style_id=STYLES.index(style),
        file_prefix="shapes",
        description=f"sam3-lora synthetic shapes (style={style}, seed={seed})",
        categories=coco_categories(SHAPES_BY_STYLE[style], "shape"),
        draw=lambda rng: draw_shapes_image(
            rng, style, image_size, shapes_per_image, size_range, distractors
        ),
    )
    return write_synthetic_dataset(Path(output_dir), params, layout, progress)


def coco_categories(names: tuple[str, ...], supercategory: str) -> list[dict[str, Any]]:
    """COCO categories for ``names``, with ids from 1 in order."""
    return [
        {"id": i, "name": name, "supercategory": supercategory}
        for i, name in enumerate(names, start=1)
    ]


def write_synthetic_dataset(
    output_dir: Path, params: dict[str, Any], layout: SyntheticLayout, progress: bool = True
) -> Path:
    """Write a synthetic dataset of ``params`` (checked) into ``output_dir`` and return it.

    ``train/`` and ``valid/`` get ``params["num_train"]`` and ``params["num_val"]`` images and
    their ``_annotations.coco.json``; ``synth_params.json`` records ``params``. Image ``index``
    of split ``s`` is drawn from ``default_rng([seed, layout.style_id, s, index])``.
    """
    _prepare_output_dir(output_dir)
    # Written first as incomplete, so an interrupted run is still recognised as ours.
    _write_params(output_dir, {**params, "complete": False})
    counts = {"train": params["num_train"], "valid": params["num_val"]}
    bar = tqdm(total=sum(counts.values()), desc=f"synth {params['style']}", disable=not progress)
    for split_index, split in enumerate(SPLITS):
        split_dir = output_dir / split
        split_dir.mkdir(parents=True)
        split_key = [params["seed"], layout.style_id, split_index]
        coco = _write_split_images(split_dir, split_key, counts[split], layout, bar)
        write_json(split_dir / ANNOTATION_FILE, coco)
        images, annotations = len(coco["images"]), len(coco["annotations"])
        logger.info("Wrote %d images, %d instances to %s", images, annotations, split_dir)
    bar.close()
    _write_params(output_dir, {**params, "complete": True})
    return output_dir


def _write_split_images(
    split_dir: Path, split_key: list[int], count: int, layout: SyntheticLayout, bar: tqdm
) -> dict[str, Any]:
    """Draw and save ``count`` images, each from ``split_key + [index]``; return their COCO dict."""
    category_ids = {c["name"]: c["id"] for c in layout.categories}
    images, annotations = [], []
    for index in range(count):
        pixels, instances = layout.draw(np.random.default_rng([*split_key, index]))
        file_name = f"{layout.file_prefix}_{index:05d}.png"
        Image.fromarray(pixels).save(split_dir / file_name, compress_level=1)
        height, width = pixels.shape[:2]
        images.append({"id": index, "file_name": file_name, "width": width, "height": height})
        for instance in instances:
            if instance.category in category_ids:  # distractors are not annotated
                annotations.append(
                    _coco_annotation(len(annotations), index, category_ids, instance)
                )
        bar.update()
    return {
        "info": {"description": layout.description},
        "images": images,
        "annotations": annotations,
        "categories": layout.categories,
    }


def ensure_shapes_dataset(output_dir: str | Path, **kwargs: Any) -> Path:
    """Return a shapes dataset at ``output_dir``, generating it only when needed.

    Reuses the folder when its ``synth_params.json`` matches the requested parameters (same
    keyword arguments as :func:`generate_shapes_dataset`) and its files are present; otherwise
    regenerates it.
    """
    signature = inspect.signature(generate_shapes_dataset)
    try:
        bound = signature.bind(output_dir, **kwargs)
    except TypeError as error:
        raise ConfigError(
            f"ensure_shapes_dataset: {error}; valid options are {list(signature.parameters)[1:]}"
        ) from error
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    progress = arguments.pop("progress")
    params = _check_params(**{k: v for k, v in arguments.items() if k != "output_dir"})
    output_dir = Path(output_dir)
    if _is_complete(output_dir, params):
        logger.info("Reusing synthetic dataset %s", output_dir)
        return output_dir
    logger.info("Generating synthetic dataset %s", output_dir)
    return generate_shapes_dataset(**arguments, progress=progress)


def draw_shapes_image(
    rng: np.random.Generator,
    style: str = "plain",
    image_size: int = 256,
    shapes_per_image: tuple[int, int] = (2, 5),
    size_range: tuple[int, int] | None = None,
    distractors: tuple[str, ...] = (),
) -> tuple[np.ndarray, list[ShapeInstance]]:
    """Draw one image (``size_range`` None: the default for ``image_size``).

    Returns:
        ``(pixels, instances)``: uint8 ``[H, W, 3]`` and the visible instances, bottom first,
        distractors included (their ``category`` is not one of the style's categories).
    """
    size_range = size_range or default_size_range(image_size)
    background, reference_colours = _draw_background(rng, style, image_size)
    for _ in range(_LAYOUT_TRIES):
        num_shapes = int(rng.integers(shapes_per_image[0], shapes_per_image[1] + 1))
        instances = _layout_shapes(
            rng, style, num_shapes, image_size, size_range, reference_colours, distractors
        )
        if len(instances) >= shapes_per_image[0]:
            break
    else:
        raise ConfigError(
            f"Could not fit {shapes_per_image[0]} shapes of size {size_range} in a "
            f"{image_size}px image; lower shapes_per_image or size_range, or raise image_size."
        )
    pixels = background
    for instance in instances:
        pixels[instance.mask] = instance.colour
    return pixels, instances


def default_size_range(image_size: int) -> tuple[int, int]:
    """``DEFAULT_SIZE_RANGE`` scaled from 256 px to ``image_size``."""
    low, high = (max(4, round(size * image_size / 256)) for size in DEFAULT_SIZE_RANGE)
    return low, high


def _layout_shapes(
    rng: np.random.Generator,
    style: str,
    num_shapes: int,
    image_size: int,
    size_range: tuple[int, int],
    reference_colours: list[np.ndarray],
    distractors: tuple[str, ...] = (),
) -> list[ShapeInstance]:
    """Place shapes one over another; return those still visible enough, bottom first."""
    names = (*SHAPES_BY_STYLE[style], *distractors)
    labels = np.zeros((image_size, image_size), dtype=np.int16)  # 0 background, k+1 shape k
    masks: list[np.ndarray] = []
    colours: list[tuple[int, int, int]] = []
    categories: list[str] = []
    for k in range(num_shapes):
        category = names[int(rng.integers(len(names)))]
        colour = _pick_colour(rng, style, reference_colours, colours)
        full_areas = np.array([m.sum() for m in masks])
        visible = np.bincount(labels.ravel(), minlength=k + 1)[1:]
        for _ in range(_PLACEMENT_TRIES):
            mask = _shape_mask(rng, category, image_size, size_range)
            covered = np.bincount(labels[mask], minlength=k + 1)[1:]
            if np.all(visible - covered >= MIN_VISIBLE_FRACTION * full_areas):
                break
        labels[mask] = k + 1
        masks.append(mask)
        colours.append(colour)
        categories.append(category)

    visible = np.bincount(labels.ravel(), minlength=num_shapes + 1)[1:]
    full_areas = np.array([m.sum() for m in masks])
    keep = [
        k
        for k in range(num_shapes)
        if visible[k] >= max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * full_areas[k])
    ]
    if len(keep) < num_shapes:  # re-layer without the dropped shapes; others only gain pixels
        labels[:] = 0
        for k in keep:
            labels[masks[k]] = k + 1
    return [
        ShapeInstance(categories[k], labels == k + 1, colours[k], int(full_areas[k])) for k in keep
    ]


def _shape_mask(
    rng: np.random.Generator, category: str, image_size: int, size_range: tuple[int, int]
) -> np.ndarray:
    """Rasterise one randomly placed shape fully inside the image (no antialiasing)."""
    canvas = Image.new("1", (image_size, image_size), 0)
    draw = ImageDraw.Draw(canvas)
    low, high = size_range
    if category == "rectangle":
        width, height = (int(v) for v in rng.integers(low, high + 1, size=2))
        x0 = int(rng.integers(0, image_size - width + 1))
        y0 = int(rng.integers(0, image_size - height + 1))
        draw.rectangle([x0, y0, x0 + width - 1, y0 + height - 1], fill=1)
        return np.array(canvas, dtype=bool)
    size = int(rng.integers(low, high + 1))
    radius = size / 2
    cx, cy = rng.uniform(radius, image_size - radius, size=2)
    if category == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius - 1, cy + radius - 1], fill=1)
    elif category == "triangle":
        # Arcs between vertices of 90-150 degrees keep every angle >= 30 degrees (no slivers).
        first_gaps = rng.uniform(np.pi / 2, 5 * np.pi / 6, size=2)
        angles = rng.uniform(0, 2 * np.pi) + np.array([0, first_gaps[0], first_gaps.sum()])
        draw.polygon(_polar_points(cx, cy, np.full(3, radius - 0.5), angles), fill=1)
    elif category == NEW_SHAPE:
        angles = rng.uniform(0, 2 * np.pi) + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, radius - 0.5, 0.45 * radius)
        draw.polygon(_polar_points(cx, cy, radii, angles), fill=1)
    else:
        raise ConfigError(f"Unknown shape {category!r}; known shapes: {SHAPES_BY_STYLE}")
    return np.array(canvas, dtype=bool)


def _polar_points(
    cx: float, cy: float, radii: np.ndarray, angles: np.ndarray
) -> list[tuple[float, float]]:
    xs = cx + radii * np.cos(angles)
    ys = cy + radii * np.sin(angles)
    return [(float(x), float(y)) for x, y in zip(xs, ys, strict=True)]


def _draw_background(
    rng: np.random.Generator, style: str, image_size: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Return uint8 ``[H, W, 3]`` pixels and the colours shapes must contrast with."""
    first = rng.integers(0, 256, size=3).astype(np.float64)
    if style == "plain":
        return np.broadcast_to(first.astype(np.uint8), (image_size, image_size, 3)).copy(), [first]
    direction = rng.normal(size=3)
    step = rng.uniform(*TEXTURE_CONTRAST) * direction / np.linalg.norm(direction)
    second = first + step if np.all((first + step >= 0) & (first + step <= 255)) else first - step
    second = np.clip(second, 0, 255)
    ys, xs = np.mgrid[0:image_size, 0:image_size].astype(np.float64)
    angle = rng.uniform(0, np.pi)
    kind = ("stripes", "checkerboard", "gradient", "noise")[int(rng.integers(4))]
    if kind == "stripes":
        period = rng.uniform(8, 32)
        phase = (xs * np.cos(angle) + ys * np.sin(angle)) // (period / 2) % 2
        pixels = np.where(phase[..., None] == 0, first, second)
        references = [first, second]
    elif kind == "checkerboard":
        cell = int(rng.integers(8, 33))
        offset_x, offset_y = rng.integers(0, cell, size=2)
        phase = ((xs + offset_x) // cell + (ys + offset_y) // cell) % 2
        pixels = np.where(phase[..., None] == 0, first, second)
        references = [first, second]
    elif kind == "gradient":
        along = xs * np.cos(angle) + ys * np.sin(angle)
        t = (along - along.min()) / max(np.ptp(along), 1e-6)
        pixels = first * (1 - t[..., None]) + second * t[..., None]
        references = [first + (second - first) * f for f in np.linspace(0, 1, 5)]
    else:  # noise: coarse blotches between the two colours, plus per-pixel grain
        grid = int(rng.integers(4, 12))
        coarse = rng.uniform(0, 1, size=(grid, grid)).astype(np.float32)
        blotches = np.asarray(
            Image.fromarray(coarse).resize((image_size,) * 2, Image.BICUBIC), dtype=np.float64
        ).clip(0, 1)
        grain = rng.normal(0, rng.uniform(3, GRAIN_MAX_STD), size=(image_size, image_size, 3))
        pixels = first + (second - first) * blotches[..., None] + grain
        references = [first + (second - first) * f for f in np.linspace(0, 1, 5)]
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8), references


def _pick_colour(
    rng: np.random.Generator,
    style: str,
    reference_colours: list[np.ndarray],
    shape_colours: list[tuple[int, int, int]],
) -> tuple[int, int, int]:
    """Sample a fill colour of the style's colour region that stands out from its surroundings."""
    best, best_margin = (0, 0, 0), -np.inf
    for _ in range(_COLOUR_TRIES):
        hue, saturation, value = rng.uniform(0, 1, size=3)
        if style == "plain":
            saturation, value = VIVID + (1 - VIVID) * saturation, VIVID + (1 - VIVID) * value
        elif saturation >= VIVID and value >= VIVID:
            continue  # shifted colours are those the plain style never uses
        colour = np.rint(np.array(colorsys.hsv_to_rgb(hue, saturation, value)) * 255)
        margin = min(
            min(np.linalg.norm(colour - r) for r in reference_colours) - MIN_BACKGROUND_CONTRAST,
            min((np.linalg.norm(colour - np.array(c)) for c in shape_colours), default=np.inf)
            - MIN_SHAPE_CONTRAST,
        )
        if margin > best_margin:
            best, best_margin = (int(colour[0]), int(colour[1]), int(colour[2])), margin
        if margin >= 0:
            break
    return best


def _coco_annotation(
    annotation_id: int, image_id: int, category_ids: dict[str, int], instance: ShapeInstance
) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(instance.mask.astype(np.uint8)))
    ys, xs = np.nonzero(instance.mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": category_ids[instance.category],
        "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()},
        "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
        "area": int(instance.mask.sum()),
        "iscrowd": 0,
    }


def _check_params(
    num_train: int,
    num_val: int,
    seed: int,
    style: str,
    image_size: int,
    shapes_per_image: tuple[int, int],
    size_range: tuple[int, int] | None,
    distractors: tuple[str, ...] | list[str] = (),
) -> dict[str, Any]:
    """Validate generator arguments; return them as a JSON-ready dict."""
    if style not in STYLES:
        raise ConfigError(f"Unknown synthetic style {style!r}; use one of {list(STYLES)}.")
    for name, value, minimum in (("num_train", num_train, 1), ("num_val", num_val, 0)):
        if int(value) != value or value < minimum:
            raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}.")
    if int(seed) != seed or seed < 0:
        raise ConfigError(f"seed={seed!r} must be a non-negative integer.")
    if image_size < 32:
        raise ConfigError(f"image_size={image_size} is too small; use at least 32 pixels.")
    low, high = _pair("shapes_per_image", shapes_per_image)
    if not 0 <= low <= high:
        raise ConfigError(
            f"shapes_per_image={shapes_per_image!r} must be (min, max) with 0 <= min <= max."
        )
    if size_range is None:
        size_range = default_size_range(image_size)
    small, large = _pair("size_range", size_range)
    if not 4 <= small <= large <= image_size:
        raise ConfigError(
            f"size_range={size_range!r} must be (min, max) with 4 <= min <= max <= "
            f"image_size ({image_size})."
        )
    distractors = list(dict.fromkeys(distractors or ()))
    for name in distractors:
        if name not in ALL_SHAPES or name in SHAPES_BY_STYLE[style]:
            unused = [n for n in ALL_SHAPES if n not in SHAPES_BY_STYLE[style]]
            raise ConfigError(
                f"distractors: {name!r} is not a shape the {style!r} style leaves unnamed; "
                f"choose from {unused}."
            )
    params = {
        "generator_version": GENERATOR_VERSION,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "seed": int(seed),
        "style": style,
        "image_size": int(image_size),
        "shapes_per_image": [low, high],
        "size_range": [small, large],
    }
    if distractors:  # absent from older params files, which stay valid
        params["distractors"] = distractors
    return params


def _pair(name: str, value: Any) -> tuple[int, int]:
    try:
        low, high = value
        return int(low), int(high)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{name}={value!r} must be a pair of integers (min, max).") from error


def _prepare_output_dir(output_dir: Path) -> None:
    """Empty a folder this module wrote before; refuse to touch anything else."""
    if output_dir.is_file():
        raise DatasetError(f"Synthetic dataset output {output_dir} is a file; pass a folder.")
    if not output_dir.exists() or not any(output_dir.iterdir()):
        output_dir.mkdir(parents=True, exist_ok=True)
        return
    if not (output_dir / PARAMS_FILE).is_file():
        raise DatasetError(
            f"{output_dir} is not empty and has no {PARAMS_FILE}, so it is not a synthetic "
            "dataset this tool wrote; choose a new or empty folder."
        )
    (output_dir / PARAMS_FILE).unlink()
    for split in SPLITS:
        if (output_dir / split).exists():
            shutil.rmtree(output_dir / split)


def _write_params(output_dir: Path, params: dict[str, Any]) -> None:
    write_json(output_dir / PARAMS_FILE, params, indent=2)


def _is_complete(output_dir: Path, params: dict[str, Any]) -> bool:
    """Whether ``output_dir`` holds a finished dataset generated with ``params``."""
    try:
        stored = json.loads((output_dir / PARAMS_FILE).read_text())
    except (OSError, ValueError):
        return False
    if stored != {**params, "complete": True}:
        return False
    expected = {"train": params["num_train"], "valid": params["num_val"]}
    for split in SPLITS:
        try:
            coco = json.loads((output_dir / split / ANNOTATION_FILE).read_text())
        except (OSError, ValueError):
            return False
        if len(coco.get("images", [])) != expected[split]:
            return False
        if not all((output_dir / split / image["file_name"]).is_file() for image in coco["images"]):
            return False
    return True
