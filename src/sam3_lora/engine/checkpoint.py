"""Training checkpoints: atomic writes, rotation, strict loading.

A checkpoint folder ``output_dir/checkpoints/step-N/`` holds the adapter in PEFT format
(``adapter_config.json`` + ``adapter_model.safetensors``), Accelerate's optimizer, scheduler and
RNG state, and ``trainer_state.json``. It is written into a temporary folder that is renamed into
place once complete, so a kill during a save never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sam3_lora.errors import CheckpointError

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def atomic_directory_write(target: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a fresh temporary folder, then rename it to ``target``.

    An existing ``target`` is replaced only after the new one is complete.
    """
    target = Path(target)
    temporary = fresh_directory(target.parent / f".{target.name}.tmp-{os.getpid()}")
    try:
        write(temporary)
        finish_directory(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return target


def fresh_directory(folder: Path) -> Path:
    """An empty ``folder`` (a leftover of a killed write is removed first)."""
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def finish_directory(temporary: Path, target: Path) -> Path:
    """Flush a completely written ``temporary`` folder to disk and rename it to ``target``
    (replacing an existing one only now)."""
    _fsync_tree(temporary)
    if target.exists():
        retired = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, retired)
        os.replace(temporary, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(temporary, target)
    return target


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def write_trainer_state(folder: Path, state: dict[str, Any]) -> None:
    (Path(folder) / TRAINER_STATE).write_text(json.dumps(state, indent=2), encoding="utf-8")


def read_trainer_state(folder: Path) -> dict[str, Any]:
    path = Path(folder) / TRAINER_STATE
    if not path.is_file():
        raise CheckpointError(
            f"{folder} is not a training checkpoint: {TRAINER_STATE} is missing "
            "(pass a folder like output_dir/checkpoints/step-N, or a run folder's "
            "latest_lora_stepN)"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from None


def step_checkpoints(checkpoints_dir: Path) -> list[tuple[int, Path]]:
    """Complete ``step-N`` checkpoints, oldest first (temporary folders are ignored)."""
    if not Path(checkpoints_dir).is_dir():
        return []
    found = []
    for child in Path(checkpoints_dir).iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / TRAINER_STATE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    found = step_checkpoints(checkpoints_dir)
    return found[-1][1] if found else None


def rotate_checkpoints(checkpoints_dir: Path, keep: int) -> list[Path]:
    """Delete the oldest ``step-N`` checkpoints beyond ``keep``; return what was removed."""
    found = step_checkpoints(checkpoints_dir)
    removed = [path for _, path in found[: max(len(found) - keep, 0)]]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    for leftover in Path(checkpoints_dir).glob(".step-*.tmp*"):
        shutil.rmtree(leftover, ignore_errors=True)
    return removed
