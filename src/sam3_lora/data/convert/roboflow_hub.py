"""Roboflow exports on the Hugging Face hub (the ``roboflow2huggingface`` layout) -> COCO.

Such a dataset repository holds a loading script (``<name>.py``, which ``datasets`` 4+ refuses
to run) and ``data/{train,valid,test}.zip``, each zip one Roboflow COCO export
(``_annotations.coco.json`` beside its images). ``data/valid-mini.zip``, a few images of valid,
is converted only when asked for by name. The zips are fetched with ``huggingface_hub``
(its cache and ``HF_HUB_OFFLINE`` are honoured), or read from a local copy of the repository (a
folder or a zip of it), and the COCO inside is imported with :func:`import_coco`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from sam3_lora.data.convert.coco import import_coco
from sam3_lora.data.convert.writer import ANNOTATION_FILE, ConversionResult, normalize_split
from sam3_lora.errors import DatasetError

logger = logging.getLogger(__name__)

_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_SPLIT_ZIP = re.compile(r"(?:^|/)data/([\w.-]+)\.zip$")
SAMPLE_SPLITS = ("valid-mini",)
_ALIASES = {"valid": ("valid", "validation", "val"), "test": ("test",), "train": ("train",)}


@contextlib.contextmanager
def roboflow_split_zips(
    dataset: str | Path,
    split: str | None = None,
    *,
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
) -> Iterator[dict[str, Path] | None]:
    """Split name -> zip of a roboflow2huggingface dataset, or None for another layout.

    ``dataset`` is a hub id, a local folder with ``data/*.zip``, a zip of such a folder, or one
    split's zip. Extracted files live until the context ends.
    """
    path = Path(dataset)
    with tempfile.TemporaryDirectory(prefix="sam3-lora-hf-") as scratch:
        if path.is_file():
            yield _from_zip(path, split, Path(scratch))
        elif path.is_dir():
            yield _select(_zips_in(path), split, path)
        elif not _REPO_ID.match(str(dataset)):
            yield None  # neither a local path nor owner/name: left to `datasets` to report
        else:
            yield _select(_fetch(str(dataset), split, cache_dir, local_files_only), split, dataset)


def convert_roboflow_zips(zips: dict[str, Path], output_dir: str | Path) -> list[ConversionResult]:
    """Import each split zip's COCO export into ``output_dir/<split>`` (images copied)."""
    results = []
    for split, archive in zips.items():
        with tempfile.TemporaryDirectory(prefix="sam3-lora-split-") as scratch:
            folder = Path(scratch)
            _extract(archive, folder)
            found = sorted(folder.rglob(ANNOTATION_FILE)) or sorted(folder.rglob("*.json"))
            if len(found) != 1:
                raise DatasetError(
                    f"{archive}: expected one {ANNOTATION_FILE} (a Roboflow COCO export), found "
                    f"{len(found)}"
                )
            annotation_file = found[0]
            try:
                results.append(import_coco(annotation_file, None, output_dir, split))
            except DatasetError as error:
                raise DatasetError(f"{archive}: {error}") from None
    return results


def _fetch(
    repo_id: str,
    split: str | None,
    cache_dir: str | Path | None,
    local_files_only: bool | None,
) -> dict[str, Path]:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    names = _ALIASES.get(normalize_split(split), (split,)) if split else ("*",)
    patterns = [f"data/{name}.zip" for name in names] + ["*.py"]
    offline = constants.HF_HUB_OFFLINE if local_files_only is None else local_files_only
    hub_logger = logging.getLogger("huggingface_hub._snapshot_download")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # "No files matched" is the normal answer for parquet
    try:
        folder = snapshot_download(
            repo_id,
            repo_type="dataset",
            allow_patterns=patterns,
            cache_dir=cache_dir,
            local_files_only=offline,
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as error:
        logger.debug("%s: no roboflow2huggingface snapshot (%s)", repo_id, error)
        return {}
    finally:
        hub_logger.setLevel(level)
    zips = _zips_in(Path(folder))
    if not zips and list(Path(folder).glob("*.py")):
        wanted = f"data/{split}.zip" if split else "data/<split>.zip"
        raise DatasetError(
            f"{repo_id} is a script-based dataset without {wanted}; only the parquet layout and "
            "the roboflow2huggingface layout (data/{train,valid,test}.zip) can be read"
        )
    return zips


def _zips_in(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted((folder / "data").glob("*.zip")) if p.is_file()}


def _from_zip(archive: Path, split: str | None, scratch: Path) -> dict[str, Path] | None:
    try:
        with zipfile.ZipFile(archive) as bundle:
            names = bundle.namelist()
            nested = {m.group(1): name for name in names if (m := _SPLIT_ZIP.search(name))}
            if nested:
                zips = {}
                for stem, member in nested.items():
                    target = scratch / f"{stem}.zip"
                    target.write_bytes(bundle.read(member))
                    zips[stem] = target
                return _select(zips, split, archive)
    except (zipfile.BadZipFile, OSError) as error:
        raise DatasetError(f"{archive} is not a readable zip file ({error})") from None
    if any(PurePosixPath(n).name == ANNOTATION_FILE for n in names):
        return {normalize_split(split or archive.stem): archive}
    raise DatasetError(
        f"{archive} holds neither data/<split>.zip (a roboflow2huggingface dataset) nor "
        f"{ANNOTATION_FILE} (a Roboflow COCO export)"
    )


def _select(zips: dict[str, Path], split: str | None, source: object) -> dict[str, Path] | None:
    if not zips:
        return None
    if split is None:
        chosen = {normalize_split(k): v for k, v in zips.items() if k not in SAMPLE_SPLITS}
        return chosen or {normalize_split(k): v for k, v in zips.items()}
    for name in _ALIASES.get(normalize_split(split), (split,)):
        if name in zips:
            return {normalize_split(split): zips[name]}
    raise DatasetError(f"{source} has no split {split!r} (data/: {sorted(zips)})")


def _extract(archive: Path, folder: Path) -> None:
    """Extract ``archive`` into ``folder``; members that would land outside it are refused."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.infolist():
                name = member.filename.replace("\\", "/")
                parts = PurePosixPath(name).parts
                if name.startswith("/") or ".." in parts or (len(name) > 1 and name[1] == ":"):
                    raise DatasetError(
                        f"{archive}: member {member.filename!r} would be written outside the "
                        "extraction folder; the archive is unsafe"
                    )
            bundle.extractall(folder)
    except zipfile.BadZipFile as error:
        raise DatasetError(f"{archive} is not a readable zip file ({error})") from None
