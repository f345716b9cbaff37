"""Overlays of instances (masks, boxes, labels, scores) and side-by-side panels for reports.

Each instance gets its own colour (golden-ratio hues), a translucent fill, a solid outline and a
box; labels are white text on a dark plate with a light border, readable on dark and light
images alike.
"""

from __future__ import annotations

import base64
import colorsys
import io
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FILL_ALPHA = 0.45


def instance_colour(index: int) -> tuple[int, int, int]:
    """A saturated colour, far from the previous ones (golden-ratio hue steps)."""
    hue = (0.13 + index * 0.618033988749895) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return round(red * 255), round(green * 255), round(blue * 255)


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` that touch the background (4-neighbourhood)."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def draw_predictions(
    image: Image.Image,
    masks: np.ndarray | Sequence[np.ndarray],
    boxes: np.ndarray | Sequence[Sequence[float]],
    labels: Sequence[str],
    scores: np.ndarray | Sequence[float] | None = None,
) -> Image.Image:
    """Draw instances on a copy of ``image``.

    Args:
        image: RGB image of size W x H.
        masks: bool ``[N, H, W]`` (may be empty).
        boxes: ``[N, 4]`` xyxy pixels.
        labels: N names; ``scores``: N values shown after the name (None: names only).
    """
    canvas = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    colours = [instance_colour(i) for i in range(len(labels))]
    for mask, colour in zip(masks, colours, strict=False):
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != canvas.shape[:2]:
            continue
        canvas[mask] = canvas[mask] * (1 - FILL_ALPHA) + np.array(colour) * FILL_ALPHA
        canvas[_outline(mask)] = colour
    result = Image.fromarray(canvas.round().clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(result)
    width, height = result.size
    font = _font(max(11, min(width, height) // 28))
    line = max(1, min(width, height) // 200)
    for k, (box, label, colour) in enumerate(zip(boxes, labels, colours, strict=False)):
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=line)
        text = label if scores is None else f"{label} {float(scores[k]):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        text_w, text_h = right - left, bottom - top
        tx = min(max(x1, 0), max(width - text_w - 4, 0))
        ty = y1 - text_h - 4 if y1 - text_h - 4 >= 0 else min(y1 + 1, max(height - text_h - 4, 0))
        draw.rectangle(
            [tx, ty, tx + text_w + 4, ty + text_h + 4], fill=(20, 20, 20), outline=(230, 230, 230)
        )
        draw.rectangle([tx, ty, tx + 3, ty + text_h + 4], fill=colour)
        draw.text((tx + 4 - left, ty + 2 - top), text, fill=(255, 255, 255), font=font)
    return result


def side_by_side(
    panels: Sequence[tuple[str, Image.Image]], panel_size: int = 320, gap: int = 6
) -> Image.Image:
    """Panels scaled to ``panel_size`` on their longer side, titled, in one row."""
    scaled = []
    for title, panel in panels:
        factor = panel_size / max(panel.size)
        size = (max(1, round(panel.width * factor)), max(1, round(panel.height * factor)))
        scaled.append((title, panel.resize(size, Image.Resampling.BILINEAR)))
    font = _font(14)
    title_h = 22
    width = sum(p.width for _, p in scaled) + gap * (len(scaled) + 1)
    height = max(p.height for _, p in scaled) + title_h + gap * 2
    sheet = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    x = gap
    for title, panel in scaled:
        draw.text((x, gap), title, fill=(20, 20, 20), font=font)
        sheet.paste(panel, (x, gap + title_h))
        x += panel.width + gap
    return sheet


def png_data_uri(image: Image.Image) -> str:
    """``data:image/png;base64,...`` for embedding in a self-contained HTML page."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
