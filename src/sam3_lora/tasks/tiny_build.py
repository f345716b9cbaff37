"""Steps shared by the scripts that build the shipped tiny models (``scripts/build_tiny_*.py``).

Each build trains a tiny model from scratch on the synthetic shapes with the project's trainer,
then saves it as package data (``assets/tiny-*``) with a ``build_info.json``. The helpers read the
arguments every build script has: ``steps``, ``batch_size``, ``learning_rate``, ``eval_steps``,
``seed``, ``data_dir``, ``num_train``, ``num_val``, ``work_dir`` and ``threads``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
from pathlib import Path
from typing import Any

import torch

from sam3_lora.engine.trainer import Trainer
from sam3_lora.models import save_model_folder

BUILD_STYLE = "plain"  # the synthetic shapes the tiny models learn from
NOISY_LOGGERS = ("accelerate", "matplotlib")


def start_build(args: argparse.Namespace) -> None:
    """Log at INFO (the noisy libraries at WARNING); use ``args.threads`` torch threads if set."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)


def training_settings(args: argparse.Namespace, warmup_steps: int) -> dict[str, Any]:
    """The ``training`` section of a build: one cosine schedule, a checkpoint per evaluation."""
    return {
        "batch_size": args.batch_size,
        "max_steps": args.steps,
        "learning_rate": args.learning_rate,
        "weight_decay": 0.01,
        "warmup_steps": warmup_steps,
        "lr_scheduler": "cosine",
        "max_grad_norm": 1.0,
        "eval_steps": args.eval_steps,
        "save_steps": args.eval_steps,
        "save_total_limit": 1,
        "logging_steps": 50,
        "num_workers": 0,
        "seed": args.seed,
        "eval_at_start": False,
    }


def synthetic_settings(args: argparse.Namespace, image_size: int) -> dict[str, Any]:
    """The ``data.synthetic`` section of a build: plain shapes of ``image_size`` pixels."""
    return {
        "output_dir": args.data_dir,
        "style": BUILD_STYLE,
        "num_train": args.num_train,
        "num_val": args.num_val,
        "seed": args.seed,
        "image_size": image_size,
    }


def output_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ``output`` section of a build: runs and checkpoints in ``args.work_dir``."""
    return {"output_dir": args.work_dir, "tensorboard": False}


def train_resuming(trainer: Trainer, args: argparse.Namespace) -> dict[str, Any]:
    """Train, resuming from the last checkpoint in ``args.work_dir`` if a killed build left one."""
    resume = (Path(args.work_dir) / "checkpoints").is_dir() or None
    return trainer.train(resume=resume)


def save_built_model(trainer: Trainer, processor: Any, output: Path, name: str) -> Any:
    """Replace ``output`` with the trained network (fp32, CPU) named ``name``, and return it."""
    if output.exists():
        shutil.rmtree(output)
    model = trainer.accelerator.unwrap_model(trainer.task.model).network.to("cpu", torch.float32)
    model.config.name_or_path = name
    save_model_folder(model, processor, output)
    return model


def build_facts(trainer: Trainer, build_seconds: float, args: argparse.Namespace) -> dict[str, Any]:
    """The ``build_info.json`` entries on how the model was built: time, machine, arguments."""
    return {
        "build_seconds": round(build_seconds, 1),
        "device": str(trainer.accelerator.device),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "args": vars(args),
    }


def write_build_info(output: Path, info: dict[str, Any]) -> None:
    """Write ``info`` as ``output/build_info.json`` and print it."""
    (output / "build_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    print(json.dumps(info, indent=2))
