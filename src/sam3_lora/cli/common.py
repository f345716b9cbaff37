"""Arguments shared by the commands that take a config."""

from __future__ import annotations

import argparse
from typing import Any

from sam3_lora.config import FLAT_OVERRIDES, Config, load_config, parse_set_overrides

_FLAT_TYPES: dict[str, type] = {
    "batch_size": int,
    "learning_rate": float,
    "num_epochs": int,
    "steps": int,
    "gradient_accumulation_steps": int,
    "lora_rank": int,
    "lora_alpha": float,
    "lora_dropout": float,
    "output_dir": str,
    "model": str,
}


def add_config_arguments(parser: argparse.ArgumentParser, config_required: bool = False) -> None:
    """``--config``, the flat SAM3-LoRA flags, ``--model`` and ``--set section.key=value``."""
    group = parser.add_argument_group("config")
    group.add_argument(
        "--config",
        required=config_required,
        help="YAML config file or preset name (minimal, balanced, full, maximum, quickstart)",
    )
    for flag, key in FLAT_OVERRIDES.items():
        help_text = (
            "hub id, local folder, or tiny / tiny-random / sam3-size"
            if flag == "model"
            else f"sets {key}"
        )
        group.add_argument(
            f"--{flag}",
            type=_FLAT_TYPES[flag],
            default=None,
            metavar=flag.upper(),
            help=help_text,
        )
    group.add_argument(
        "--set",
        dest="set_overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any config key, e.g. --set training.max_steps=6 (repeatable)",
    )


def config_from_args(args: argparse.Namespace, default_config: str | None = None) -> Config:
    """Load the config named by ``--config`` (or ``default_config``) with all overrides applied."""
    overrides: dict[str, Any] = {}
    for flag, key in FLAT_OVERRIDES.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    overrides.update(parse_set_overrides(args.set_overrides))
    return load_config(args.config or default_config, overrides)
