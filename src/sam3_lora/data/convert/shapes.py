"""What several converters share: shapes as polygons, and finding an export's images on disk.

``ImageIndex`` lists the image files under a folder once (links that lead outside it are left
out) and finds an export's image by its relative path, its base name, or its base name without an
upload prefix, so that a path written in an annotation file never reaches outside its dataset.
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path, PurePosixPath

from sam3_lora.data.images import is_image_file
from sam3_lora.errors import DatasetError

logger = logging.getLogger(__name__)

UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-(?=.)")  # Label Studio's "8f3a2b1c-name.jpg"


def ellipse_polygon(cx: float, cy: float, rx: float, ry: float, theta: float) -> list[float]:
    """A flat polygon around an ellipse (``theta`` in radians); 16 to 256 points by size."""
    count = max(16, min(256, int(math.pi * (rx + ry) / 2)))
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    points = []
    for k in range(count):
        angle = 2 * math.pi * k / count
        x, y = rx * math.cos(angle), ry * math.sin(angle)
        points += [cx + x * cos_t - y * sin_t, cy + x * sin_t + y * cos_t]
    return points


def rotated_box_polygon(
    x: float, y: float, width: float, height: float, degrees: float, about_centre: bool
) -> list[float]:
    """The corners of a box rotated clockwise on screen (y down), about its centre or corner."""
    theta = math.radians(degrees)
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    ox, oy = (x + width / 2, y + height / 2) if about_centre else (x, y)
    corners = [(x, y), (x + width, y), (x + width, y + height), (x, y + height)]
    polygon = []
    for px, py in corners:
        dx, dy = px - ox, py - oy
        polygon += [ox + dx * cos_t - dy * sin_t, oy + dx * sin_t + dy * cos_t]
    return polygon


def check_polygon(polygon: list[float], where: str) -> None:
    """Raise :class:`DatasetError` naming ``where`` unless it is >= 3 finite points."""
    if len(polygon) < 6 or len(polygon) % 2:
        raise DatasetError(
            f"{where}: polygon with {len(polygon) // 2} points; a polygon needs at least 3 "
            "(delete the shape or redraw it)"
        )
    if not all(math.isfinite(v) for v in polygon):
        raise DatasetError(f"{where}: polygon has NaN or infinite coordinates")


class ImageIndex:
    """The image files under ``root``, found by relative path or base name."""

    def __init__(self, root: str | Path | None):
        self.root = Path(root) if root is not None else None
        self._by_name: dict[str, list[Path]] = {}
        if self.root is None:
            return
        if not self.root.is_dir():
            raise DatasetError(f"images folder {self.root} does not exist")
        real_root = self.root.resolve()
        for path in sorted(self.root.rglob("*")):
            if not (path.is_file() and is_image_file(path)):
                continue
            real = path.resolve()
            if real_root not in real.parents:
                logger.warning("%s leads outside %s (a link?); ignored", path, self.root)
                continue
            self._by_name.setdefault(path.name, []).append(path)

    def __len__(self) -> int:
        return sum(len(paths) for paths in self._by_name.values())

    def find(self, reference: str, strip_prefix: bool = False) -> Path | None:
        """The file an export's image ``reference`` (a path or URL tail) names, or None.

        Tries the base name, then (``strip_prefix``) the name without an upload prefix; when a
        name is in several folders, the one whose path ends like ``reference`` wins.
        """
        relative = PurePosixPath(reference.replace("\\", "/"))
        names = [relative.name]
        if strip_prefix and UPLOAD_PREFIX.match(relative.name):
            names.append(UPLOAD_PREFIX.sub("", relative.name))
        for name in names:
            candidates = self._by_name.get(name, [])
            if len(candidates) == 1:
                return candidates[0]
            if candidates:
                return self._best_suffix_match(candidates, relative, reference)
        return None

    def _best_suffix_match(
        self, candidates: list[Path], relative: PurePosixPath, reference: str
    ) -> Path:
        parts = [p for p in relative.parts if p not in ("", ".", "..", "/")]
        for path in candidates:
            tail = path.relative_to(self.root).parts  # type: ignore[arg-type]
            if len(tail) <= len(parts) and list(tail) == parts[-len(tail) :]:
                return path
        shown = ", ".join(os.fspath(p) for p in candidates[:3])
        raise DatasetError(
            f"image {reference!r} matches several files ({shown}); keep one image per name under "
            f"{self.root} or pass the folder that holds the right one"
        )


def strip_upload_prefix(name: str) -> str:
    """``8f3a2b1c-frame.jpg`` -> ``frame.jpg`` (Label Studio's upload prefix); others unchanged."""
    return UPLOAD_PREFIX.sub("", name)
