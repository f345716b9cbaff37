"""The training loop: Accelerate, mixed precision, accumulation, clipping, schedule, validation,
atomic checkpoints, resume, early stopping, logging; right on one process or N.

The trainer knows loops, not models: it drives a task (:class:`sam3_lora.engine.task.Task`):
``outputs = task.model(batch)`` (the one module Accelerate prepares), ``task.loss(outputs,
batch, num_targets)``, ``task.validation_statistics(outputs, batch)``, weight I/O.

On N processes (Accelerate does the distributed work): the training data of an epoch is sharded
without duplication (a last incomplete round of batches is dropped), step counts come from the
prepared loader, the loss normaliser is averaged over processes, a non-finite loss on any process
makes every process skip the step, validation is split between the processes and gathered,
every process takes part in ``save_state`` and the main process alone writes files and logs.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.data_loader import get_sampler
from accelerate.utils import (
    DistributedDataParallelKwargs,
    DistributedType,
    InitProcessGroupKwargs,
    broadcast_object_list,
    gather_object,
)
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from sam3_lora.config import Config
from sam3_lora.engine.checkpoint import (
    atomic_directory_write,
    finish_directory,
    fresh_directory,
    read_trainer_state,
    write_trainer_state,
)
from sam3_lora.engine.determinism import seed_everything
from sam3_lora.engine.layout import LayoutPlan, OutputLayout, new_run_dir, resolve_run
from sam3_lora.engine.optim import decay_groups
from sam3_lora.engine.reporting import (
    MetricsLog,
    comparison_table,
    plot_curves,
    read_metrics_csv,
    summary_table,
    write_summary,
)
from sam3_lora.engine.schedules import (
    EpochShuffleSampler,
    build_scheduler,
    resolve_mixed_precision,
)
from sam3_lora.engine.task import Task
from sam3_lora.errors import CheckpointError, Sam3LoraError

logger = logging.getLogger(__name__)


class TrainingError(Sam3LoraError):
    """Training cannot go on (e.g. the loss keeps being non-finite)."""


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


class Trainer:
    """One readable loop: ``setup()``, ``train()``, ``save_checkpoint()``, ``cleanup()``.

    Args:
        config: the run's config (``training``, ``evaluation`` and ``output`` sections are used).
        task: the task (see :mod:`sam3_lora.engine.task`).
        train_dataset / valid_dataset: datasets of the task's samples (``set_epoch`` optional).
        layout: where the files go (:mod:`sam3_lora.engine.layout`); default ``standard``, all
            in ``output.output_dir``. With ``sam2_lora`` that folder holds the run folders.
        config_text: written to the run folder as ``config.yaml`` (the caller renders it: the
            engine does not import the tasks that rendering needs).
        memory_advice: ``(GPU bytes or None) -> text`` that the out-of-memory stop puts in its
            message (the caller's estimate and the settings to change); default: a generic list.
    """

    def __init__(
        self,
        config: Config,
        task: Task,
        train_dataset: Dataset,
        valid_dataset: Dataset | None,
        layout: LayoutPlan | None = None,
        config_text: str | None = None,
        memory_advice: Callable[[int | None], str] | None = None,
    ) -> None:
        self.config = config
        self.memory_advice = memory_advice
        self.task = task
        self.train_dataset = train_dataset
        self.valid_dataset = valid_dataset
        self.collate_fn = task.collate
        self.plan = layout or LayoutPlan()
        self.config_text = config_text
        self.output_dir = Path(config.output.output_dir)
        self.layout = OutputLayout(self.plan, self.output_dir)  # run folder: set in setup()
        self.resume_request: str | Path | bool | None = None  # what train(resume=) asked for
        self.resume_from: Path | None = None  # the checkpoint that request resolved to
        self.state = TrainerState()

    @property
    def run_dir(self) -> Path:
        """The folder of this run's files (``output.output_dir`` in the standard layout)."""
        return self.layout.run_dir

    @property
    def checkpoints_dir(self) -> Path:
        return self.layout.checkpoints_dir

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Accelerator, seeds, the run folder (a new one, or that of :attr:`resume_request`),
        loaders, optimizer, schedule."""
        settings = self.config.training
        precision = resolve_mixed_precision(settings.mixed_precision)
        _forget_single_process_state(precision)
        self.accelerator = Accelerator(
            mixed_precision=precision,
            gradient_accumulation_steps=settings.gradient_accumulation_steps,
            step_scheduler_with_optimizer=False,
            kwargs_handlers=[
                InitProcessGroupKwargs(timeout=timedelta(seconds=settings.distributed_timeout_s)),
                # Full fine-tuning trains weights a batch may not reach (SAM3's box encoder on
                # text-only prompts): DDP must look for them, as Meta's trainer does.
                DistributedDataParallelKwargs(
                    find_unused_parameters=bool(getattr(self.task, "find_unused_parameters", False))
                ),
            ],
        )
        check_launch(self.accelerator)
        self._restore_determinism = seed_everything(settings.seed, settings.deterministic)
        self._open_run_folder(self.resume_request)
        processes = self.accelerator.num_processes
        self.sampler = EpochShuffleSampler(len(self.train_dataset), settings.seed)
        train_loader = DataLoader(
            self.train_dataset,
            batch_size=settings.batch_size,
            sampler=self.sampler,
            collate_fn=self.collate_fn,
            num_workers=settings.num_workers,
            generator=torch.Generator().manual_seed(settings.seed),
            persistent_workers=False,
            drop_last=processes > 1,  # every process gets full batches, none is repeated
        )
        self.train_loader = self.accelerator.prepare(train_loader)
        # Accelerate shards the batches of this very sampler (on one process: iterates it).
        assert get_sampler(self.train_loader) in (None, self.sampler)
        self.valid_loader = self._validation_loader()
        optimizer = torch.optim.AdamW(
            self._parameter_groups(),
            lr=settings.learning_rate,
            fused=torch.cuda.is_available() or None,
        )
        batches = len(self.train_loader)  # per process, after sharding
        if batches == 0:
            raise TrainingError(
                f"{len(self.train_dataset)} training images give no full batch of "
                f"{settings.batch_size} on each of {processes} processes; lower "
                "training.batch_size or use fewer processes"
            )
        self.steps_per_epoch = math.ceil(batches / settings.gradient_accumulation_steps)
        self.total_steps = settings.max_steps or self.steps_per_epoch * settings.num_epochs
        scheduler = build_scheduler(
            settings.lr_scheduler,
            optimizer,
            settings.warmup_steps,
            self.total_steps,
            settings.cooldown_steps,
            settings.min_lr_ratio,
        )
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(
            self.task.model, optimizer, scheduler
        )
        # Accelerate saves optimizer, scheduler and RNG; the adapter is saved in PEFT format by
        # the task instead of a full model state dict (the frozen base is not copied).
        self.accelerator.register_save_state_pre_hook(lambda models, weights, _dir: weights.clear())
        self.accelerator.register_load_state_pre_hook(lambda models, _dir: models.clear())
        self.metrics = MetricsLog(
            self.run_dir,
            tensorboard=self.config.output.tensorboard,
            enabled=self.is_main,
            path=self.layout.metrics_csv,
            tensorboard_dir=self.layout.tensorboard_dir,
        )

    def _open_run_folder(self, resume: str | Path | bool | None) -> None:
        """Resolve the layout's run folder (the main process names a new one and every process
        takes its name) and the checkpoint to resume from; write ``config.yaml`` into it."""
        new_dir = [None]
        if self.plan.kind != "standard" and self.is_main:
            new_dir = [new_run_dir(self.output_dir, self.plan.run_name)]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(new_dir)
        self.layout, self.resume_from = resolve_run(
            self.plan, self.output_dir, resume, new_dir=new_dir[0]
        )
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.layout.prune_bests()  # a kill between two best writes left two pairs
            if self.config_text is not None:
                (self.run_dir / "config.yaml").write_text(self.config_text, encoding="utf-8")
        self.accelerator.wait_for_everyone()

    @property
    def is_main(self) -> bool:
        """Whether this is the process that writes files and logs."""
        return self.accelerator.is_main_process

    def _parameter_groups(self) -> list[dict[str, Any]]:
        """The task's optimizer groups (per component and layer in full fine-tuning), or
        AdamW's usual two: weight decay on weights, none on biases and norms (Meta's rule)."""
        settings = self.config.training
        groups = self.task.parameter_groups() if hasattr(self.task, "parameter_groups") else None
        if groups is None:
            groups = decay_groups(
                self.task.model.named_parameters(), settings.learning_rate, settings.weight_decay
            )
        if not any(group["params"] for group in groups):
            raise TrainingError("no trainable parameters: check the lora / finetune sections")
        return groups

    def _validation_loader(self) -> DataLoader | None:
        """This process's share of the validation split: every N-th image from its rank (the
        shares are disjoint; :meth:`evaluate` gathers them)."""
        if self.valid_dataset is None or not len(self.valid_dataset):
            return None
        rank, processes = self.accelerator.process_index, self.accelerator.num_processes
        share = Subset(self.valid_dataset, range(rank, len(self.valid_dataset), processes))
        return DataLoader(
            share,
            batch_size=self.config.evaluation.batch_size,
            shuffle=False,
            collate_fn=self.collate_fn,
            num_workers=self.config.training.num_workers,
        )

    # ----------------------------------------------------------------- resume
    def resume(self, checkpoint: str | Path) -> Path:
        """Restore adapter, optimizer, scheduler, RNG and loop state from ``checkpoint`` (what
        :func:`sam3_lora.engine.layout.resolve_run` found for ``--resume``)."""
        folder = Path(checkpoint)
        state = read_trainer_state(folder)
        if self.accelerator.distributed_type != DistributedType.FSDP:
            self.task.load_weights(folder)  # under FSDP load_state restores the shards
        try:
            self.accelerator.load_state(str(folder))
        except (FileNotFoundError, KeyError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"{folder}: optimizer / scheduler / RNG state: {error}") from None
        known = TrainerState.__dataclass_fields__
        self.state = TrainerState(**{k: v for k, v in state.items() if k in known})
        if self.is_main:
            self.metrics.rows = [
                r
                for r in read_metrics_csv(self.metrics.path)
                if r.get("step", 0) <= self.state.global_step
            ]
        logger.info("resumed from %s at step %d", folder, self.state.global_step)
        return folder

    def _finite_everywhere(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every process: all take the step, or all skip it."""
        finite = torch.isfinite(loss.detach()).float().reshape(1)
        if self.accelerator.num_processes > 1:
            finite = self.accelerator.reduce(finite, reduction="sum")
        return int(finite.item()) == self.accelerator.num_processes

    def _mean_over_processes(self, losses: dict[str, torch.Tensor]) -> dict[str, float]:
        """The loss terms averaged over processes, for logging (one number per step)."""
        values = torch.stack([v.detach().float().reshape(()) for v in losses.values()])
        if self.accelerator.num_processes > 1:
            values = self.accelerator.reduce(values, reduction="mean")
        return dict(zip(losses, values.tolist(), strict=True))

    def _num_targets(self, batch: Any) -> float:
        """The loss normaliser: the batch's targets averaged over processes (Meta), >= 1."""
        count = torch.tensor(float(batch.num_targets), device=self.accelerator.device)
        return max(float(self.accelerator.reduce(count, reduction="mean")), 1.0)

    # ------------------------------------------------------------------ train
    def train(self, resume: str | Path | bool | None = None) -> dict[str, Any]:
        """Run to ``max_steps`` / ``num_epochs`` or early stop; returns the summary.

        Raises:
            TrainingError: also when another process of a distributed run died or stopped
                answering (after ``training.distributed_timeout_s``), instead of a hang.
        """
        try:
            return self._train(resume)
        except torch.OutOfMemoryError:
            settings = self.config.training
            raise TrainingError(
                f"out of GPU memory at step {self.state.global_step + 1} (batch "
                f"{settings.batch_size} per process): {self._out_of_memory_advice()}. "
                "Checkpoints are in "
                f"{self.checkpoints_dir}; --resume continues from the last one"
            ) from None
        except (RuntimeError, torch.distributed.DistError) as error:
            accelerator = getattr(self, "accelerator", None)
            if accelerator is None or accelerator.num_processes < 2 or not _lost_peer(error):
                raise
            raise TrainingError(
                f"process {accelerator.process_index} of {accelerator.num_processes}: another "
                "process of the distributed run stopped or did not answer within "
                f"training.distributed_timeout_s ({self.config.training.distributed_timeout_s} "
                f"s): {str(error).strip().splitlines()[0][:200]}. Checkpoints are in "
                f"{self.checkpoints_dir}; start the run again with --resume"
            ) from None
        finally:
            restore = getattr(self, "_restore_determinism", None)
            if restore is not None:  # training.deterministic changes process-wide settings
                restore()

    def _out_of_memory_advice(self) -> str:
        """The caller's advice (its estimate and the settings to change), else a generic one."""
        generic = (
            "lower training.batch_size (or data.max_prompts_per_image), turn on "
            "training.gradient_checkpointing, set loss.mask_loss_resolution, or adapt fewer "
            "components (a smaller preset)"
        )
        accelerator = getattr(self, "accelerator", None)
        if self.memory_advice is None or (accelerator is not None and not self.is_main):
            return generic  # one process estimates (it takes a while at the released size)
        logger.info("out of GPU memory: estimating what fits")
        gpu_memory = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            gpu_memory = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        try:
            return self.memory_advice(gpu_memory)
        except Exception as error:  # the advice must not hide the out-of-memory stop
            logger.warning("memory advice failed: %s", error)
            return generic

    def _train(self, resume: str | Path | bool | None) -> dict[str, Any]:
        self.resume_request = resume
        self.setup()
        if self.resume_from is not None:
            self.resume(self.resume_from)
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
            # Samples already used this epoch, by every process (resume).
            skip_batches = self.state.step_in_epoch * settings.gradient_accumulation_steps
            self.sampler.skip_first(skip_batches * settings.batch_size * accelerator.num_processes)
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
                    if self._finite_everywhere(loss):
                        accelerator.backward(loss)
                        for key, value in self._mean_over_processes(losses).items():
                            window_terms[key] = window_terms.get(key, 0.0) + value
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
        lr = max(self.scheduler.get_last_lr())  # the largest group's (full mode: the detector)
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
        """Validation loss and metrics over the whole validation split (each process runs its
        share; the statistics of all are gathered, so N processes give 1 process's numbers)."""
        if self.valid_loader is None:
            return {}
        # The module without the DDP wrapper: shares may differ by one batch, and a wrapped
        # forward would wait for the other processes.
        model = self.accelerator.unwrap_model(self.model)
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
                statistics = self.task.validation_statistics(model(batch), batch)
            steps.append({k: v.detach().cpu() for k, v in statistics.items()})
        model.train(was_training)
        if self.accelerator.num_processes > 1:
            steps = gather_object(steps)
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
            write = self._weights_writer()  # every process: FSDP gathers the weights
            if self.is_main:
                self._save_best(metrics, write)
        else:
            self.state.evaluations_without_gain += 1
            if settings.patience and self.state.evaluations_without_gain >= settings.patience:
                logger.info("early stopping: no gain for %d validations", settings.patience)
                return "early stopping"
        return "finished"

    def _weights_writer(self) -> Callable[[Path], None]:
        """``task.save_weights``; under FSDP with the full state dict gathered first. Call it on
        every process (the gathering is a collective); only the main one writes."""
        if self.accelerator.distributed_type != DistributedType.FSDP:
            return self.task.save_weights
        gathered = self.accelerator.get_state_dict(self.model)
        return partial(self.task.save_weights, state_dict=gathered)

    def _save_best(self, metrics: dict[str, float], write: Callable[[Path], None]) -> None:
        """``best/``; in the ``sam2_lora`` layout the ``best_lora_...`` adapter and, when the
        task can fold it in (``task.can_merge``, default yes), the ``best_merged_...`` model,
        replacing the previous pair (each folder atomic; the old pair goes once the new one is
        complete)."""
        step = self.state.global_step
        written = [atomic_directory_write(self.layout.best_dir(step, metrics), write)]
        save_merged = getattr(self.task, "save_merged_weights", None)
        sharded = self.accelerator.distributed_type == DistributedType.FSDP
        mergeable = getattr(self.task, "can_merge", True) and not sharded
        if self.layout.named and save_merged is not None and mergeable:
            target = self.layout.best_dir(step, metrics, merged=True)
            written.append(atomic_directory_write(target, save_merged))
        self.layout.prune_bests(keep=tuple(written))

    # ------------------------------------------------------------ checkpoint
    def save_checkpoint(self) -> Path:
        """``checkpoints/step-N`` (``latest_lora_stepN``): adapter + optimizer / scheduler / RNG +
        loop state, atomic; the oldest beyond ``training.save_total_limit`` are deleted.

        Every process writes its part of Accelerate's state (its RNG; FSDP's shards) into one
        temporary folder; the main process adds the weights and the loop state and renames it
        into place once complete.
        """
        accelerator = self.accelerator
        target = self.layout.checkpoint_dir(self.state.global_step)
        temporary = target.parent / f".{target.name}.tmp"
        if self.is_main:
            fresh_directory(temporary)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(temporary))
        write = self._weights_writer()
        accelerator.wait_for_everyone()
        if self.is_main:
            write(temporary)
            write_trainer_state(temporary, self.state.__dict__)
            finish_directory(temporary, target)
            self.layout.rotate(self.config.training.save_total_limit)
        accelerator.wait_for_everyone()
        return target

    # ---------------------------------------------------------------- finish
    def _finish(self, started: float, images_at_start: int, stop_reason: str) -> dict[str, Any]:
        evaluated_last_step = bool(self.state.history) and (
            self.state.history[-1]["step"] == self.state.global_step
        )
        if not evaluated_last_step and self.valid_loader is not None and stop_reason == "finished":
            self._evaluate_and_track()
        final_dir = self.layout.final_dir(self.state.global_step)
        write = self._weights_writer()
        if self.is_main:
            atomic_directory_write(final_dir, write)
        elapsed = time.perf_counter() - started
        images = self.state.images_seen - images_at_start
        final_metrics = self.state.history[-1] if self.state.history else {}
        adapter_file = final_dir / "adapter_model.safetensors"
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
            "output_dir": str(self.run_dir),
            "final_dir": str(final_dir),
            "best_dir": str(best) if (best := self.layout.current_best()) else None,
        }
        notes = getattr(self.task, "summary_notes", None)  # optional: what the task adds
        if callable(notes):
            summary.update(notes())
        self.summary_table = summary_table(summary)
        self.comparison_table = None
        if self.state.baseline and final_metrics:
            summary["base_metrics"] = {
                k: v
                for k, v in self.state.baseline.items()
                if k != "step" and not k.startswith("val/loss_")
            }
            self.comparison_table = comparison_table(summary["base_metrics"], final_metrics)
        if self.is_main:
            write_summary(summary, self.run_dir / "training_summary.json")
            plot_curves(self.metrics.rows, self.run_dir / "curves.png")
        self.metrics.close()
        self.accelerator.wait_for_everyone()
        return summary


def _forget_single_process_state(mixed_precision: str) -> None:
    """Let a second run in the same process (a notebook, a test session) use another precision:
    Accelerate keeps its state per process and refuses a different ``mixed_precision`` later.
    Single-process runs only (a distributed state holds the process group)."""
    from accelerate.state import AcceleratorState, is_initialized

    if not is_initialized() or int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return
    if str(AcceleratorState().mixed_precision) != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=True)


def _lost_peer(error: BaseException) -> bool:
    """Whether a collective failed because a peer process died or timed out."""
    if isinstance(error, torch.distributed.DistError):
        return True
    text = str(error).lower()
    signs = ("gloo", "nccl", "connection closed", "connection reset", "timed out", "timeout")
    return any(sign in text for sign in signs)


def check_launch(accelerator: Accelerator) -> None:
    """Stop when the environment says N processes but Accelerate sees one (each would train
    alone and write the same output folder)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and accelerator.num_processes == 1:
        raise TrainingError(
            f"WORLD_SIZE={world}: this is one of {world} launched processes, but Accelerate sees "
            "a single process, so each would train alone. Launch with "
            f"`sam3-lora train --num_gpus {world} ...`, or "
            f"`accelerate launch --num_processes {world} -m sam3_lora.cli train ...`; on CPUs, "
            f"`ACCELERATE_USE_CPU=1 torchrun --nproc_per_node {world} -m sam3_lora.cli train ...`"
        )


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    except ImportError:  # pragma: no cover - Windows
        return float("nan")
