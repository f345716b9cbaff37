"""Where a training run's files go: the output layout, chosen by the task or the config and
passed in as data (the engine knows no model).

``standard`` (SAM3, full fine-tuning): everything in ``output.output_dir``::

    checkpoints/step-N/  best/  final/  metrics.csv  tensorboard/  curves.png
    training_summary.json  config.yaml

``sam2_lora`` (the SAM2-LoRA recipe's names): one run folder per run inside
``output.output_dir``, named ``{run_name}_{timestamp}`` (``run_name`` e.g.
``sam2_large_lora_r8_a16_lr1e-3``)::

    latest_lora_step{N}/                          checkpoints (adapter + optimizer state), the
                                                  newest ``training.save_total_limit`` kept
    best_lora_step{S}_iou{iou:.4f}_dice{dice:.4f}/   the best adapter, and the same model with
    best_merged_step{S}_iou{iou:.4f}_dice{dice:.4f}/ the adapter folded in (one pair at a time)
    final_lora_step{N}/                           the adapter after the last step
    logs/training_metrics_lora_{timestamp}.csv  logs/tensorboard/
    training_summary.json  config.yaml  curves.png

Every ``_lora_`` folder is a plain PEFT adapter folder (checkpoints add optimizer / RNG files and
``trainer_state.json``); every folder is written atomically (:mod:`sam3_lora.engine.checkpoint`).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from sam3_lora.engine.checkpoint import TRAINER_STATE
from sam3_lora.errors import CheckpointError

LayoutKind = Literal["standard", "sam2_lora"]
LAYOUTS: tuple[str, ...] = ("standard", "sam2_lora")

TIMESTAMP_FORMAT = "%Y%m%d_%H%M%S"
_RUN_DIR = re.compile(r"^(?P<name>.+)_(?P<stamp>\d{8}_\d{6}(?:-\d+)?)$")
_STEP = {
    "standard": re.compile(r"^step-(\d+)$"),
    "sam2_lora": re.compile(r"^latest_lora_step(\d+)$"),
}
_BEST = re.compile(r"^best_(?:lora|merged)_step(\d+)(?:_.*)?$")
_FINAL = re.compile(r"^final_lora_step(\d+)$")


@dataclass(frozen=True)
class LayoutPlan:
    """The layout a run asks for (what the task / config chose).

    Attributes:
        kind: ``standard`` or ``sam2_lora``.
        run_name: ``sam2_lora``: the run folder's name before ``_{timestamp}``.
        best_metrics: ``sam2_lora``: ``(label, metric)`` pairs written into the best folders'
            names, e.g. ``(("iou", "val/miou"), ("dice", "val/dice"))``.
    """

    kind: LayoutKind = "standard"
    run_name: str = ""
    best_metrics: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in LAYOUTS:
            raise ValueError(f"unknown output layout `{self.kind}`; use one of {LAYOUTS}")
        if self.kind == "sam2_lora" and not self.run_name:
            raise ValueError("the sam2_lora layout needs a run_name")


@dataclass(frozen=True)
class OutputLayout:
    """The folders and files of one run (``run_dir`` resolved)."""

    plan: LayoutPlan
    run_dir: Path
    timestamp: str = ""

    @property
    def named(self) -> bool:
        return self.plan.kind == "sam2_lora"

    @property
    def checkpoints_dir(self) -> Path:
        """The folder that holds the step checkpoints."""
        return self.run_dir if self.named else self.run_dir / "checkpoints"

    def checkpoint_dir(self, step: int) -> Path:
        name = f"latest_lora_step{step}" if self.named else f"step-{step}"
        return self.checkpoints_dir / name

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints, oldest first (temporary folders are ignored)."""
        return find_checkpoints(self.checkpoints_dir, self.plan.kind)

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1][1] if found else None

    def rotate(self, keep: int) -> list[Path]:
        """Delete the oldest checkpoints beyond ``keep`` and leftovers of killed saves."""
        found = self.checkpoints()
        removed = [path for _, path in found[: max(len(found) - keep, 0)]]
        for path in removed:
            shutil.rmtree(path, ignore_errors=True)
        prefix = ".latest_lora_step" if self.named else ".step-"
        for leftover in self.checkpoints_dir.glob(f"{prefix}*.tmp*"):
            shutil.rmtree(leftover, ignore_errors=True)
        return removed

    def best_dir(self, step: int, metrics: Mapping[str, float], merged: bool = False) -> Path:
        """``best/``, or ``best_{lora|merged}_step{S}_{label}{value:.4f}...`` (labels whose
        metric is missing are left out)."""
        if not self.named:
            return self.run_dir / "best"
        kind = "merged" if merged else "lora"
        values = "".join(
            f"_{label}{metrics[metric]:.4f}"
            for label, metric in self.plan.best_metrics
            if metric in metrics
        )
        return self.run_dir / f"best_{kind}_step{step}{values}"

    def best_dirs(self) -> list[tuple[int, Path]]:
        """``sam2_lora``: the best folders on disk (adapter and merged), oldest first."""
        if not self.named or not self.run_dir.is_dir():
            return []
        found = []
        for child in self.run_dir.iterdir():
            match = _BEST.match(child.name)
            if match and child.is_dir():
                found.append((int(match.group(1)), child))
        return sorted(found)

    def current_best(self) -> Path | None:
        """The best weights on disk: ``best/``, or the newest ``best_lora_step*`` folder."""
        if not self.named:
            best = self.run_dir / "best"
            return best if best.is_dir() else None
        adapters = [path for _, path in self.best_dirs() if path.name.startswith("best_lora_")]
        return adapters[-1] if adapters else None

    def prune_bests(self, keep: tuple[Path, ...] = ()) -> list[Path]:
        """Delete every best folder but ``keep`` (default, at the start of a run: the newest
        step's, and the temporary folders of killed writes), so that one best pair is left."""
        found = self.best_dirs()
        if not keep and self.named and self.run_dir.is_dir():  # leftovers of killed writes
            for pattern in (".best_*.tmp-*", ".final_lora_step*.tmp-*"):
                for leftover in self.run_dir.glob(pattern):
                    shutil.rmtree(leftover, ignore_errors=True)
        if not keep and found:
            newest = found[-1][0]
            keep = tuple(path for step, path in found if step == newest)
        removed = [path for _, path in found if path not in keep]
        for path in removed:
            shutil.rmtree(path, ignore_errors=True)
        return removed

    def final_dir(self, step: int) -> Path:
        return self.run_dir / (f"final_lora_step{step}" if self.named else "final")

    @property
    def metrics_csv(self) -> Path:
        if self.named:
            return self.run_dir / "logs" / f"training_metrics_lora_{self.timestamp}.csv"
        return self.run_dir / "metrics.csv"

    @property
    def tensorboard_dir(self) -> Path:
        return self.run_dir / ("logs/tensorboard" if self.named else "tensorboard")


def find_checkpoints(folder: Path, kind: LayoutKind = "standard") -> list[tuple[int, Path]]:
    """Complete checkpoints of a layout in ``folder`` (with ``trainer_state.json``), oldest
    first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        match = _STEP[kind].match(child.name)
        if match and (child / TRAINER_STATE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def format_learning_rate(lr: float) -> str:
    """``1e-3`` for 0.001, ``2.5e-4`` for 0.00025 (the SAM2-LoRA run names)."""
    mantissa, exponent = f"{lr:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def run_dirs(output_dir: Path, run_name: str) -> list[Path]:
    """``{run_name}_{timestamp}`` folders in ``output_dir``, oldest first."""
    if not Path(output_dir).is_dir():
        return []
    found = []
    for child in Path(output_dir).iterdir():
        match = _RUN_DIR.match(child.name)
        if child.is_dir() and match and match.group("name") == run_name:
            found.append((match.group("stamp"), child))
    return [path for _, path in sorted(found)]


def timestamp_of(run_dir: Path) -> str:
    match = _RUN_DIR.match(Path(run_dir).name)
    return match.group("stamp") if match else Path(run_dir).name


def new_run_dir(output_dir: Path, run_name: str, now: datetime | None = None) -> Path:
    """A run folder that does not exist yet: ``{run_name}_{YYYYmmdd_HHMMSS}`` (``-2``, ``-3``
    ... when a run of the same second has it)."""
    stamp = (now or datetime.now()).strftime(TIMESTAMP_FORMAT)
    candidate, index = Path(output_dir) / f"{run_name}_{stamp}", 1
    while candidate.exists():
        index += 1
        candidate = Path(output_dir) / f"{run_name}_{stamp}-{index}"
    return candidate


def resolve_run(
    plan: LayoutPlan,
    output_dir: Path,
    resume: str | Path | bool | None = None,
    new_dir: Path | None = None,
) -> tuple[OutputLayout, Path | None]:
    """The run's layout and the checkpoint to resume from (None: a fresh run).

    Args:
        resume: ``True``: the latest checkpoint (``sam2_lora``: in the newest run folder of
            ``plan.run_name`` that has one, which the run continues in); a checkpoint folder
            (its run folder is continued when it is one of ``output_dir``'s, else the run
            starts a new run folder from it); a run folder (its latest checkpoint).
        new_dir: ``sam2_lora``: the folder of a fresh run (the main process picks it with
            :func:`new_run_dir` and shares it); default: picked here.

    Raises:
        CheckpointError: nothing to resume from, naming where it looked.
    """
    output_dir = Path(output_dir)
    if plan.kind == "standard":
        layout = OutputLayout(plan, output_dir)
        if resume is True:
            found = layout.latest_checkpoint()
            if found is None:
                raise CheckpointError(
                    f"--resume: no checkpoint in {layout.checkpoints_dir}; start without --resume"
                )
            return layout, found
        return layout, Path(resume) if resume else None
    checkpoint = None
    run_dir = None
    if resume is True:
        for candidate in reversed(run_dirs(output_dir, plan.run_name)):
            found = find_checkpoints(candidate, plan.kind)
            if found:
                run_dir, checkpoint = candidate, found[-1][1]
                break
        if checkpoint is None:
            raise CheckpointError(
                f"--resume: no run folder {plan.run_name}_<timestamp> with a latest_lora_step* "
                f"checkpoint in {output_dir}; start without --resume, or pass the checkpoint"
            )
    elif resume:
        path = Path(resume)
        found = find_checkpoints(path, plan.kind)
        if not (path / TRAINER_STATE).is_file() and found:
            run_dir, checkpoint = path, found[-1][1]  # a run folder
        else:
            checkpoint = path
            if path.parent.parent.resolve() == output_dir.resolve():
                run_dir = path.parent
    if run_dir is None:
        run_dir = new_dir or new_run_dir(output_dir, plan.run_name)
    return OutputLayout(plan, run_dir, timestamp_of(run_dir)), checkpoint


def latest_final(plan: LayoutPlan, output_dir: Path) -> Path | None:
    """The last run's final weights: ``final/``, or the ``final_lora_step*`` of the newest run
    folder that has one (what ``--eval-only`` evaluates)."""
    if plan.kind == "standard":
        folder = Path(output_dir) / "final"
        return folder if folder.is_dir() else None
    for run_dir in reversed(run_dirs(Path(output_dir), plan.run_name)):
        finals = sorted(
            (int(m.group(1)), child)
            for child in run_dir.iterdir()
            if (m := _FINAL.match(child.name)) and child.is_dir()
        )
        if finals:
            return finals[-1][1]
    return None
