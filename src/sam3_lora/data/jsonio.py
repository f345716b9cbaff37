"""Read and write JSON annotation files with messages that name the file and the position."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from sam3_lora.errors import DatasetError


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; missing, non-UTF-8 or malformed files raise :class:`DatasetError`."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as error:
        raise DatasetError(f"annotation file {path} does not exist") from error
    except IsADirectoryError as error:
        raise DatasetError(f"{path} is a folder, expected a JSON annotation file") from error
    except OSError as error:
        raise DatasetError(f"annotation file {path} cannot be read: {error}") from error
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DatasetError(
            f"{path} is not UTF-8: byte {raw[error.start]:#04x} at line {line} (offset "
            f"{error.start}); re-save the file as UTF-8"
        ) from error
    if not text.strip():
        raise DatasetError(f"{path} is empty; expected a JSON document")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        truncated = error.pos >= len(text.rstrip()) - 1
        hint = "the file looks truncated; re-export it" if truncated else "fix the JSON syntax"
        raise DatasetError(
            f"{path} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}; "
            f"{hint}"
        ) from error


def write_json(path: str | Path, data: Any, indent: int | None = None) -> Path:
    """Write JSON atomically (temporary file + rename), rejecting NaN / infinity."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(data, stream, indent=indent, allow_nan=False, ensure_ascii=False)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
