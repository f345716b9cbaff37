"""``sam3-lora train --num_gpus N``: the launch command for N processes, run for the user.

The distributed work is Accelerate's; this module only writes the command a user would type:
``accelerate launch --multi_gpu --num_processes N -m sam3_lora.cli ...`` with GPUs, or
``torchrun --nproc_per_node N -m sam3_lora.cli ...`` with ``ACCELERATE_USE_CPU=1`` on CPUs
(``accelerate launch --cpu --num_processes N`` starts a single process there).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import torch


def without_option(argv: Sequence[str], option: str) -> list[str]:
    """``argv`` without ``option VALUE`` / ``option=VALUE``."""
    kept: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
        elif item == option:
            skip = True
        elif not item.startswith(option + "="):
            kept.append(item)
    return kept


def launch_command(num_processes: int, argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run ``sam3-lora <argv>`` on ``num_processes``."""
    env = dict(os.environ)
    if torch.cuda.is_available():
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(num_processes),
            "-m",
            "sam3_lora.cli",
        ]
    else:
        env["ACCELERATE_USE_CPU"] = "1"
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(num_processes),
            "-m",
            "sam3_lora.cli",
        ]
    return [*command, *argv], env


def relaunch(num_processes: int, argv: Sequence[str]) -> int:
    """Run ``sam3-lora <argv>`` on ``num_processes`` processes; their exit code."""
    command, env = launch_command(num_processes, argv)
    return subprocess.run(command, env=env, check=False).returncode


def process_state(timeout_s: int = 600) -> Any | None:
    """Accelerate's process state of a distributed launch (created with the training timeout,
    so the trainer's own setting holds), or None for a single process."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return None
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    state = PartialState(
        cpu=parse_flag_from_env("ACCELERATE_USE_CPU"), timeout=timedelta(seconds=timeout_s)
    )
    return state if state.num_processes > 1 else None
