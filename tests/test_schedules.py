"""Learning-rate schedules: warmup, decay and Meta's inverse square root with cooldown."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from sam3_lora.engine.trainer import build_scheduler


def _learning_rates(name: str, total: int, warmup: int, cooldown: int = 0) -> list[float]:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = build_scheduler(name, optimizer, warmup, total, cooldown)
    rates = []
    for _ in range(total + 1):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_inverse_sqrt_follows_meta_warmup_decay_and_cooldown() -> None:
    rates = _learning_rates("inverse_sqrt", total=100, warmup=20, cooldown=20)
    assert rates[0] == 0.0
    assert rates[10] == pytest.approx(0.5)  # half-way through the warmup
    assert rates[20] == pytest.approx(1.0)
    assert rates[45] == pytest.approx(1 / math.sqrt(45 / 20))  # lr / sqrt(step / timescale)
    assert rates[80] == pytest.approx(1 / math.sqrt(80 / 20))  # cooldown starts here
    assert rates[90] == pytest.approx(1 / math.sqrt(90 / 20) * 0.5)
    assert rates[100] == 0.0


def test_inverse_sqrt_without_cooldown_keeps_decaying_slowly() -> None:
    rates = _learning_rates("inverse_sqrt", total=100, warmup=20)
    assert rates[100] == pytest.approx(1 / math.sqrt(5))


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_decaying_schedules_warm_up_then_reach_zero(name: str) -> None:
    rates = _learning_rates(name, total=50, warmup=10)
    assert rates[5] == pytest.approx(0.5)
    assert rates[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(rates[10:]))
    assert rates[50] == pytest.approx(0.0, abs=1e-9)


def test_constant_schedule_stays_after_warmup() -> None:
    rates = _learning_rates("constant", total=30, warmup=10)
    assert rates[10:] == pytest.approx([1.0] * 21)
