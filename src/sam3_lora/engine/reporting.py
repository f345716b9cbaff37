"""What a training run leaves for people: metrics.csv, TensorBoard, curves.png, a summary."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

from rich.table import Table

logger = logging.getLogger(__name__)


class MetricsLog:
    """Rows of ``{step, epoch, lr, train/*, val/*}`` kept in memory and mirrored to disk.

    ``metrics.csv`` is rewritten on each call (it is small), so columns that appear later
    (validation metrics) get a header, and a killed run still leaves a readable file.
    TensorBoard gets the same scalars when available.
    """

    def __init__(
        self,
        output_dir: Path,
        tensorboard: bool = True,
        rows: list | None = None,
        enabled: bool = True,
        path: Path | None = None,
        tensorboard_dir: Path | None = None,
    ):
        """``enabled=False`` (processes other than the main one) keeps rows, writes nothing;
        ``path`` / ``tensorboard_dir`` default to ``output_dir/metrics.csv`` / ``tensorboard``."""
        self.path = Path(path) if path is not None else Path(output_dir) / "metrics.csv"
        tensorboard_dir = tensorboard_dir or Path(output_dir) / "tensorboard"
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = list(rows or [])
        self.enabled = enabled
        self.writer = None
        if tensorboard and enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(tensorboard_dir))
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                logger.warning("tensorboard is not installed; logging to metrics.csv only")

    def log(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if not self.enabled:
            return
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key, value, row["step"])
            self.writer.flush()
        self._write_csv()

    def _write_csv(self) -> None:
        columns: list[str] = []
        for row in self.rows:
            columns.extend(k for k in row if k not in columns)
        temporary = self.path.with_suffix(".csv.tmp")
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)
        temporary.replace(self.path)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of an existing ``metrics.csv`` (numbers parsed), e.g. to continue after a resume."""
    if not Path(path).is_file():
        return []
    with open(path, encoding="utf-8") as handle:
        return [
            {k: _number(v) for k, v in row.items() if v not in ("", None)}
            for row in csv.DictReader(handle)
        ]


def _number(text: str) -> Any:
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text else value


def plot_curves(rows: list[dict[str, Any]], output_path: Path) -> Path | None:
    """``curves.png``: training / validation loss and the validation metrics over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]
    valid = [r for r in rows if "val/loss" in r]
    if not train and not valid:
        return None
    figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        loss_axis.plot(*zip(*train, strict=True), label="train loss", alpha=0.8)
    if valid:
        loss_axis.plot(
            [r["step"] for r in valid],
            [r["val/loss"] for r in valid],
            "o-",
            label="validation loss",
        )
    loss_axis.set_xlabel("step")
    loss_axis.set_yscale("log")
    loss_axis.set_title("loss")
    loss_axis.legend()
    # Every validation metric that is a share or a score in [0, 1] (not losses or counts).
    keys = dict.fromkeys(k for r in valid for k in r if k.startswith("val/"))
    for key in keys:
        points = [(r["step"], r[key]) for r in valid if key in r]
        if key.startswith("val/loss") or not all(0 <= v <= 1 for _, v in points):
            continue
        metric_axis.plot(*zip(*points, strict=True), "o-", label=key.removeprefix("val/"))
    metric_axis.set_xlabel("step")
    metric_axis.set_ylim(0, 1)
    metric_axis.set_title("validation")
    if metric_axis.get_legend_handles_labels()[0]:
        metric_axis.legend()
    figure.tight_layout()
    figure.savefig(output_path, dpi=110)
    plt.close(figure)
    return Path(output_path)


def summary_table(summary: dict[str, Any], title: str = "training summary") -> Table:
    """The end-of-run table."""
    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, dict):
            value = ", ".join(
                f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items()
            )
        table.add_row(key.replace("_", " "), str(value))
    return table


def write_summary(summary: dict[str, Any], path: Path) -> None:
    Path(path).write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")


def comparison_table(
    base: dict[str, float], adapted: dict[str, float], title: str = "validation: base vs adapted"
) -> Table:
    """Metrics of the base model (step 0) and of the trained adapter side by side."""
    table = Table(title=title)
    for header in ("metric", "base", "adapted", "change"):
        table.add_column(header, justify="left" if header == "metric" else "right")
    for key in adapted:
        if key in base and isinstance(adapted[key], float) and key not in ("step", "val/prompts"):
            change = adapted[key] - base[key]
            table.add_row(key, f"{base[key]:.4f}", f"{adapted[key]:.4f}", f"{change:+.4f}")
    return table
