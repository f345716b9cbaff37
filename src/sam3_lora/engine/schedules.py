"""Learning-rate schedules, mixed precision and the resumable epoch sampler of the trainer."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch.utils.data import Sampler
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_cosine_with_min_lr_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)


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
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warmup, then cosine / linear decay, constant, or Meta's inverse square root.
    ``min_lr_ratio``: where the cosine ends, as a share of each group's peak (SAM2.1: 0.1)."""
    if name == "cosine" and min_lr_ratio > 0:
        return get_cosine_with_min_lr_schedule_with_warmup(
            optimizer, warmup_steps, total_steps, min_lr_rate=min_lr_ratio
        )
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
