"""What the base model found among each image's candidate negatives, and its JSON cache.

The verification pass (:mod:`sam3_lora.tasks.concept.negatives`) scores every image of a split
on a pool of candidate negatives with the base model. Its result, :class:`NegativeCheck`, keeps
the best score of each (image, candidate); a threshold then says which candidates are present
(not negatives) on which image. It is cached as JSON next to the annotation file, in
``.sam3-lora/negatives-<file>-<key>.json``, where the key hashes the annotation file, the model,
the candidate vocabulary, the pool size, the seed and the resolution: a later run with the same
inputs reads it instead of running the model again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sam3_lora.data.jsonio import write_json

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
CACHE_DIR_NAME = ".sam3-lora"
CACHE_PREFIX = "negatives-"


@dataclass
class NegativeCheck:
    """Best base-model score of each image's candidate negatives.

    Attributes:
        concepts: the candidate vocabulary (the dataset's negative vocabulary).
        scores: image id -> candidate -> best score (detection x presence) of the base model.
        threshold: a candidate scored at or above it is present on that image.
        dataset / model: what was checked, for the reports.
        seconds: how long the pass took (0 when read from the cache).
        cache_file: where the result is cached (None when it could not be written).
    """

    concepts: list[str]
    scores: dict[int, dict[str, float]]
    threshold: float
    dataset: str = ""
    model: str = ""
    seconds: float = 0.0
    cache_file: Path | None = None
    from_cache: bool = field(default=False)

    def negatives(self, image_id: int) -> list[str]:
        """The image's verified negatives: its candidates the base model does not find."""
        return [c for c, s in self.scores.get(image_id, {}).items() if s < self.threshold]

    def present(self, image_id: int) -> list[str]:
        """The candidates the base model finds on the image, best score first."""
        found = [(s, c) for c, s in self.scores.get(image_id, {}).items() if s >= self.threshold]
        return [c for _, c in sorted(found, key=lambda item: (-item[0], item[1]))]

    def presence(self) -> dict[str, tuple[int, int]]:
        """Concept -> (images it was checked on, images it was found on), most often found
        first."""
        checked: Counter[str] = Counter()
        found: Counter[str] = Counter()
        for per_image in self.scores.values():
            for concept, score in per_image.items():
                checked[concept] += 1
                found[concept] += score >= self.threshold
        order = sorted(checked, key=lambda c: (-found[c] / checked[c], -found[c], c))
        return {c: (checked[c], found[c]) for c in order}

    def summary(self, top: int = 5) -> str:
        """One line: candidates checked and dropped, and the concepts most often present."""
        total = sum(len(s) for s in self.scores.values())
        dropped = sum(len(self.present(i)) for i in self.scores)
        head = (
            f"negative verification ({self.dataset or 'dataset'}, threshold {self.threshold:g}): "
            f"{len(self.scores)} images x {total // max(len(self.scores), 1)} candidates, "
            f"{dropped} of {total} dropped ({100 * dropped / max(total, 1):.1f} %)"
        )
        common = [(c, n, k) for c, (n, k) in self.presence().items() if k][:top]
        if not common:
            return head + "; the base model finds none of the candidates"
        found = ", ".join(f"{c} present in {100 * k / n:.0f} % of {n} images" for c, n, k in common)
        return f"{head}; most often present: {found}"

    def to_json(self, key: dict[str, Any]) -> dict[str, Any]:
        return {
            "version": CACHE_VERSION,
            "key": key,
            "dataset": self.dataset,
            "model": self.model,
            "concepts": self.concepts,
            "scores": {
                str(i): {c: round(s, 5) for c, s in v.items()} for i, v in self.scores.items()
            },
        }


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def text_digest(items: list[str]) -> str:
    """sha256 of a list of texts (order counts)."""
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()


def cache_key(fields: dict[str, Any]) -> str:
    """A short hash of the fields that determine a verification result."""
    text = json.dumps(fields, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_path(annotation_file: str | Path, key: str) -> Path:
    """``<annotation folder>/.sam3-lora/negatives-<annotation file>-<key>.json``."""
    annotation_file = Path(annotation_file)
    stem = annotation_file.name.removesuffix(".json")
    return annotation_file.parent / CACHE_DIR_NAME / f"{CACHE_PREFIX}{stem}-{key}.json"


def fallback_cache_path(path: Path) -> Path:
    """Where a cache goes when the dataset folder is read-only: the user's cache folder."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sam3-lora"
    digest = hashlib.sha256(str(path.parent.resolve()).encode()).hexdigest()[:12]
    return root / "negatives" / digest / path.name


def read_cache(path: Path, key: dict[str, Any], threshold: float) -> NegativeCheck | None:
    """The cached check at ``path`` (or its fallback) when it matches ``key``; None when absent;
    a corrupt or stale file is reported (warning) and ignored (it is then rewritten)."""
    for candidate in (path, fallback_cache_path(path)):
        if candidate.is_file():
            break
    else:
        return None
    try:
        data = json.loads(candidate.read_text(encoding="utf-8"))
        check = _parse(data, key, threshold)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        logger.warning(
            "negative verification cache %s is unreadable (%s); it is recomputed and rewritten",
            candidate,
            error,
        )
        return None
    check.cache_file, check.from_cache = candidate, True
    return check


def _parse(data: Any, key: dict[str, Any], threshold: float) -> NegativeCheck:
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        raise ValueError(f"not a version-{CACHE_VERSION} verification file")
    if data.get("key") != key:
        raise ValueError("its key does not match this dataset, model and vocabulary")
    concepts = [str(c) for c in data["concepts"]]
    known = set(concepts)
    scores: dict[int, dict[str, float]] = {}
    for image_id, per_image in data["scores"].items():
        values = {str(c): float(s) for c, s in per_image.items()}
        if not known.issuperset(values):
            raise ValueError(f"image {image_id} has candidates outside its vocabulary")
        scores[int(image_id)] = values
    return NegativeCheck(
        concepts, scores, threshold, str(data.get("dataset", "")), str(data.get("model", ""))
    )


def write_cache(check: NegativeCheck, path: Path, key: dict[str, Any]) -> Path | None:
    """Write ``check`` to ``path`` (or, when that folder is read-only, the user's cache folder);
    returns where it went, None when nowhere was writable (warned)."""
    for candidate in (path, fallback_cache_path(path)):
        try:
            write_json(candidate, check.to_json(key))
        except OSError as error:
            logger.warning("cannot write the negative verification cache %s: %s", candidate, error)
            continue
        return candidate
    return None


def find_caches(annotation_file: str | Path) -> list[dict[str, Any]]:
    """Every verification cache of ``annotation_file`` (newest first), parsed; unreadable files
    are skipped. Each dict has the file's fields and ``path``."""
    pattern = f"{CACHE_PREFIX}{Path(annotation_file).name.removesuffix('.json')}-*.json"
    first = cache_path(annotation_file, "x")
    files = [*first.parent.glob(pattern), *fallback_cache_path(first).parent.glob(pattern)]
    found = []
    for file in sorted(set(files), key=lambda f: f.stat().st_mtime, reverse=True):
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("version") == CACHE_VERSION:
            found.append({**data, "path": file})
    return found


def cached_check(entry: dict[str, Any], threshold: float) -> NegativeCheck:
    """A :func:`find_caches` entry as a :class:`NegativeCheck` at ``threshold``."""
    check = _parse(entry, entry["key"], threshold)
    check.cache_file, check.from_cache = Path(entry["path"]), True
    return check
