"""The training loop: Accelerate, mixed precision, accumulation, clipping, schedule, validation,
atomic checkpoints, resume, early stopping, logging.

The trainer knows loops, not models: it drives a task (:class:`sam3_lora.engine.task.Task`):
``outputs = task.model(batch)`` (the one module Accelerate prepares), ``task.loss(outputs,
batch, num_targets)``, ``task.validation_statistics(outputs, batch)``, weight I/O.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.data_loader import get_sampler
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from sam3_lora.config import Config
from sam3_lora.engine.checkpoint import (
    atomic_directory_write,
    latest_checkpoint,
    read_trainer_state,
    rotate_checkpoints,
    write_trainer_state,
)
from sam3_lora.engine.reporting import (
    MetricsLog,
    comparison_table,
    plot_curves,
    read_metrics_csv,
    summary_table,
    write_summary,
)
from sam3_lora.engine.task import Task
from sam3_lora.errors import CheckpointError, Sam3LoraError

logger = logging.getLogger(__name__)


class TrainingError(Sam3LoraError):
    """Training cannot go on (e.g. the loss keeps being non-finite)."""


class EpochShuffleSampler(Sampler[int]):
    """A random permutation that depends only on ``(seed, epoch)``, so a resumed run sees the
    same order as an uninterrupted one. ``skip`` drops the first samples of the epoch (resume)
    without loading them and without touching any global random state."""

    def __init__(self, length: int, seed: int) -> None:
        self.length, self.seed, self.epoch, self.skip = length, seed, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_first(self, count: int) -> None:
        """Leave out the first ``count`` samples of the coming epochs (0 to stop skipping)."""
        self.skip = min(count, self.length)

    def __len__(self) -> int:
        return self.length - self.skip

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=generator)[self.skip :].tolist())


@dataclass
class TrainerState:
    """What a checkpoint must remember besides weights, optimizer, scheduler and RNG."""

    global_step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    evaluations_without_gain: int = 0
    images_seen: int = 0
    baseline: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)


def resolve_mixed_precision(setting: str) -> str:
    """``auto`` -> ``bf16`` on a GPU that supports it, else ``no`` (fp32)."""
    if setting != "auto":
        return setting
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def build_scheduler(
    name: str,
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    cooldown_steps: int = 0,
) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warmup, then cosine / linear decay, constant, or Meta's inverse square root."""
    if name == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    if name == "linear":
        return get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    if name == "inverse_sqrt":
        factor = partial(
            inverse_sqrt_factor, warmup=warmup_steps, cooldown=cooldown_steps, total=total_steps
        )
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return get_constant_schedule_with_warmup(optimizer, warmup_steps)


def inverse_sqrt_factor(step: int, warmup: int, cooldown: int, total: int) -> float:
    """Meta's SAM3 schedule (timescale = warmup): linear warmup, lr / sqrt(step / warmup), and a
    linear cooldown to 0 over the last ``cooldown`` steps."""
    timescale = max(warmup, 1)
    factor = 1.0 if step <= warmup else 1.0 / math.sqrt(step / timescale)
    if warmup:
        factor *= min(1.0, step / warmup)
    if cooldown:
        factor *= max(0.0, min(1.0, (total - step) / cooldown))
    return factor


class Trainer:
    """One readable loop: ``setup()``, ``train()``, ``save_checkpoint()``, ``cleanup()``.

    Args:
        config: the run's config (``training``, ``evaluation`` and ``output`` sections are used).
        task: the task (see :mod:`sam3_lora.engine.task`).
        train_dataset / valid_dataset: datasets of the task's samples (``set_epoch`` optional).
    """

    def __init__(
        self,
        config: Config,
        task: Task,
        train_dataset: Dataset,
        valid_dataset: Dataset | None,
    ) -> None:
        self.config = config
        self.task = task
        self.train_dataset = train_dataset
        self.valid_dataset = valid_dataset
        self.collate_fn = task.collate
        self.output_dir = Path(config.output.output_dir)
        self.checkpoints_dir = self.output_dir / "checkpoints"
        self.state = TrainerState()

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        settings = self.config.training
        self.accelerator = Accelerator(
            mixed_precision=resolve_mixed_precision(settings.mixed_precision),
            gradient_accumulation_steps=settings.gradient_accumulation_steps,
            step_scheduler_with_optimizer=False,
        )
        set_seed(settings.seed)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.sampler = EpochShuffleSampler(len(self.train_dataset), settings.seed)
        loader_generator = torch.Generator().manual_seed(settings.seed)
        train_loader = DataLoader(
            self.train_dataset,
            batch_size=settings.batch_size,
            sampler=self.sampler,
            collate_fn=self.collate_fn,
            num_workers=settings.num_workers,
            generator=loader_generator,
            persistent_workers=False,
            drop_last=False,
        )
        self.valid_loader = None
        if self.valid_dataset is not None and len(self.valid_dataset):
            self.valid_loader = DataLoader(
                self.valid_dataset,
                batch_size=self.config.evaluation.batch_size,
                shuffle=False,
                collate_fn=self.collate_fn,
                num_workers=settings.num_workers,
                generator=torch.Generator().manual_seed(settings.seed),
            )
        parameters = [p for p in self.task.model.parameters() if p.requires_grad]
        if not parameters:
            raise TrainingError("no trainable parameters: check the lora section of the config")
        decay = [p for p in parameters if p.ndim >= 2]
        no_decay = [p for p in parameters if p.ndim < 2]  # biases, norms: no weight decay (Meta)
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": settings.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=settings.learning_rate,
            fused=torch.cuda.is_available() or None,
        )
        self.steps_per_epoch = math.ceil(len(train_loader) / settings.gradient_accumulation_steps)
        self.total_steps = settings.max_steps or self.steps_per_epoch * settings.num_epochs
        scheduler = build_scheduler(
            settings.lr_scheduler,
            optimizer,
            settings.warmup_steps,
            self.total_steps,
            settings.cooldown_steps,
        )
        self.model, self.optimizer, self.train_loader, self.scheduler = self.accelerator.prepare(
            self.task.model, optimizer, train_loader, scheduler
        )
        self.sampler = get_sampler(self.train_loader)  # the one Accelerate iterates
        # Accelerate saves optimizer, scheduler and RNG; the adapter is saved in PEFT format by
        # the task instead of a full model state dict (the frozen base is not copied).
        self.accelerator.register_save_state_pre_hook(lambda models, weights, _dir: weights.clear())
        self.accelerator.register_load_state_pre_hook(lambda models, _dir: models.clear())
        self.metrics = MetricsLog(self.output_dir, tensorboard=self.config.output.tensorboard)

    # ----------------------------------------------------------------- resume
    def resume(self, checkpoint: str | Path | bool) -> Path:
        """Restore adapter, optimizer, scheduler, RNG and loop state; ``True`` = the latest."""
        folder = latest_checkpoint(self.checkpoints_dir) if checkpoint is True else Path(checkpoint)
        if folder is None:
            raise CheckpointError(
                f"--resume: no checkpoint in {self.checkpoints_dir}; start without --resume"
            )
        state = read_trainer_state(folder)
        self.task.load_weights(folder)
        try:
            self.accelerator.load_state(str(folder))
        except (FileNotFoundError, KeyError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"{folder}: optimizer / scheduler / RNG state: {error}") from None
        known = TrainerState.__dataclass_fields__
        self.state = TrainerState(**{k: v for k, v in state.items() if k in known})
        self.metrics.rows = [
            r
            for r in read_metrics_csv(self.metrics.path)
            if r.get("step", 0) <= self.state.global_step
        ]
        logger.info("resumed from %s at step %d", folder, self.state.global_step)
        return folder

    def _num_targets(self, batch: Any) -> float:
        """The loss normaliser: the batch's targets averaged over processes (Meta), >= 1."""
        count = torch.tensor(float(batch.num_targets), device=self.accelerator.device)
        return max(float(self.accelerator.reduce(count, reduction="mean")), 1.0)

    # ------------------------------------------------------------------ train
    def train(self, resume: str | Path | bool | None = None) -> dict[str, Any]:
        """Run to ``max_steps`` / ``num_epochs`` or early stop; returns the summary."""
        self.setup()
        if resume:
            self.resume(resume)
        settings = self.config.training
        accelerator = self.accelerator
        if settings.eval_at_start and self.state.global_step == 0 and self.valid_loader is not None:
            self._evaluate_and_track()
            self.state.baseline = dict(self.state.history[-1]) if self.state.history else {}
        started = time.perf_counter()
        images_at_start = self.state.images_seen
        nonfinite_in_a_row = 0
        stop_reason = "finished"
        progress = tqdm(
            total=self.total_steps,
            initial=self.state.global_step,
            desc="training",
            unit="step",
            disable=not accelerator.is_local_main_process,
            dynamic_ncols=True,
        )
        while self.state.global_step < self.total_steps and stop_reason == "finished":
            epoch = self.state.epoch
            skip_batches = self.state.step_in_epoch * settings.gradient_accumulation_steps
            self.sampler.skip_first(skip_batches * settings.batch_size)
            self.train_loader.set_epoch(epoch)  # Accelerate re-applies it to the sampler
            if hasattr(self.train_dataset, "set_epoch"):
                self.train_dataset.set_epoch(epoch)
            self.model.train()
            window_is_bad = False
            window_terms: dict[str, float] = {}
            for batch in self.train_loader:
                with accelerator.accumulate(self.model):
                    with accelerator.autocast():
                        outputs = self.model(batch)
                        losses = self.task.loss(outputs, batch, self._num_targets(batch))
                    loss = losses["loss"]
                    if torch.isfinite(loss):
                        accelerator.backward(loss)
                        for key, value in losses.items():
                            window_terms[key] = window_terms.get(key, 0.0) + value.item()
                    else:
                        window_is_bad = True
                    self.state.images_seen += batch.num_images * accelerator.num_processes
                    if not accelerator.sync_gradients:
                        continue
                    if window_is_bad:
                        self.optimizer.zero_grad(set_to_none=True)
                        nonfinite_in_a_row += 1
                        logger.warning(
                            "non-finite loss at step %d: step skipped (%d in a row)",
                            self.state.global_step + 1,
                            nonfinite_in_a_row,
                        )
                        window_is_bad, window_terms = False, {}
                        if nonfinite_in_a_row >= settings.max_nonfinite_steps:
                            raise TrainingError(
                                f"the loss was non-finite {nonfinite_in_a_row} steps in a row; "
                                "stopped. Lower training.learning_rate or check the data "
                                "(`sam3-lora data validate`); the last good checkpoint is in "
                                f"{self.checkpoints_dir}"
                            )
                        continue
                    nonfinite_in_a_row = 0
                    grad_norm = None
                    if settings.max_grad_norm:
                        grad_norm = accelerator.clip_grad_norm_(
                            self.model.parameters(), settings.max_grad_norm
                        )
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                self.state.global_step += 1
                self.state.step_in_epoch += 1
                progress.update(1)
                stop_reason = self._after_step(
                    window_terms, grad_norm, started, images_at_start, progress
                )
                window_terms = {}
                if stop_reason != "finished" or self.state.global_step >= self.total_steps:
                    break
            else:
                self.state.epoch += 1
                self.state.step_in_epoch = 0
                self.sampler.skip_first(0)
                if self.config.training.eval_steps is None:
                    stop_reason = self._evaluate_and_track()
                if self.config.training.save_steps is None:
                    self.save_checkpoint()
        progress.close()
        return self._finish(started, images_at_start, stop_reason)

    def _after_step(
        self,
        terms: dict[str, float],
        grad_norm: torch.Tensor | float | None,
        started: float,
        images_at_start: int,
        progress: tqdm,
    ) -> str:
        settings = self.config.training
        step = self.state.global_step
        accumulation = settings.gradient_accumulation_steps
        elapsed = time.perf_counter() - started
        images_per_second = (self.state.images_seen - images_at_start) / max(elapsed, 1e-9)
        lr = self.scheduler.get_last_lr()[0]
        progress.set_postfix(
            loss=f"{terms.get('loss', float('nan')) / accumulation:.3f}",
            lr=f"{lr:.2e}",
            img_s=f"{images_per_second:.1f}",
        )
        if step % settings.logging_steps == 0 or step == 1 or step == self.total_steps:
            row = {"step": step, "epoch": self.state.epoch, "lr": lr}
            row.update({f"train/{k}": v / accumulation for k, v in terms.items()})
            if grad_norm is not None:
                row["train/grad_norm"] = float(grad_norm)
            row["train/images_per_second"] = images_per_second
            self.metrics.log(row)
        reason = "finished"
        if settings.eval_steps and step % settings.eval_steps == 0:
            reason = self._evaluate_and_track()
        if settings.save_steps and step % settings.save_steps == 0:
            self.save_checkpoint()
        return reason

    # -------------------------------------------------------------- validate
    def evaluate(self) -> dict[str, float]:
        """Validation loss and metrics over the validation split."""
        if self.valid_loader is None:
            return {}
        model = self.model
        was_training = model.training
        model.eval()
        steps = []
        for batch in tqdm(
            self.valid_loader,
            desc="validating",
            leave=False,
            disable=not self.accelerator.is_local_main_process,
        ):
            batch = batch.to(self.accelerator.device)
            with torch.no_grad(), self.accelerator.autocast():
                steps.append(self.task.validation_statistics(model(batch), batch))
        model.train(was_training)
        return self.task.summarize_validation(steps)

    def _evaluate_and_track(self) -> str:
        metrics = self.evaluate()
        if not metrics:
            return "finished"
        settings = self.config.training
        self.metrics.log({"step": self.state.global_step, "epoch": self.state.epoch, **metrics})
        self.state.history.append({"step": self.state.global_step, **metrics})
        logger.info(
            "step %d: %s",
            self.state.global_step,
            ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if not k.startswith("val/loss_")),
        )
        value = metrics.get(settings.metric_for_best)
        if value is None:
            raise TrainingError(
                f"training.metric_for_best `{settings.metric_for_best}` is not a validation "
                f"metric; choose one of {', '.join(sorted(metrics))}"
            )
        sign = 1.0 if settings.greater_is_better else -1.0
        best = self.state.best_metric
        if best is None or sign * (value - best) > settings.min_delta:
            self.state.best_metric, self.state.best_step = value, self.state.global_step
            self.state.evaluations_without_gain = 0
            atomic_directory_write(self.output_dir / "best", self.task.save_weights)
        else:
            self.state.evaluations_without_gain += 1
            if settings.patience and self.state.evaluations_without_gain >= settings.patience:
                logger.info("early stopping: no gain for %d validations", settings.patience)
                return "early stopping"
        return "finished"

    # ------------------------------------------------------------ checkpoint
    def save_checkpoint(self) -> Path:
        """``checkpoints/step-N``: adapter + optimizer / scheduler / RNG + loop state, atomic."""
        target = self.checkpoints_dir / f"step-{self.state.global_step}"

        def write(folder: Path) -> None:
            self.accelerator.save_state(str(folder))
            self.task.save_weights(folder)
            write_trainer_state(folder, self.state.__dict__)

        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            atomic_directory_write(target, write)
            rotate_checkpoints(self.checkpoints_dir, self.config.training.save_total_limit)
        return target

    # ---------------------------------------------------------------- finish
    def _finish(self, started: float, images_at_start: int, stop_reason: str) -> dict[str, Any]:
        evaluated_last_step = bool(self.state.history) and (
            self.state.history[-1]["step"] == self.state.global_step
        )
        if not evaluated_last_step and self.valid_loader is not None and stop_reason == "finished":
            self._evaluate_and_track()
        atomic_directory_write(self.output_dir / "final", self.task.save_weights)
        elapsed = time.perf_counter() - started
        images = self.state.images_seen - images_at_start
        final_metrics = self.state.history[-1] if self.state.history else {}
        adapter_file = self.output_dir / "final" / "adapter_model.safetensors"
        summary = {
            "stop_reason": stop_reason,
            "steps": self.state.global_step,
            "epochs": round(self.state.global_step / max(self.steps_per_epoch, 1), 2),
            "best_metric": self.config.training.metric_for_best,
            "best_value": self.state.best_metric,
            "best_step": self.state.best_step,
            "final_metrics": {
                k: v
                for k, v in final_metrics.items()
                if k != "step" and not k.startswith("val/loss_")
            },
            "wall_time_s": round(elapsed, 2),
            "images_per_second": round(images / max(elapsed, 1e-9), 2),
            "peak_memory_mb": round(_peak_memory_mb(), 1),
            "adapter_size_mb": round(adapter_file.stat().st_size / 2**20, 3)
            if adapter_file.exists()
            else None,
            "output_dir": str(self.output_dir),
        }
        self.summary_table = summary_table(summary)
        self.comparison_table = None
        if self.state.baseline and final_metrics:
            summary["base_metrics"] = {
                k: v
                for k, v in self.state.baseline.items()
                if k != "step" and not k.startswith("val/loss_")
            }
            self.comparison_table = comparison_table(summary["base_metrics"], final_metrics)
        write_summary(summary, self.output_dir / "training_summary.json")
        plot_curves(self.metrics.rows, self.output_dir / "curves.png")
        self.metrics.close()
        return summary


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    except ImportError:  # pragma: no cover - Windows
        return float("nan")
