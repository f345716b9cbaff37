"""Arguments shared by the commands that take a config."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sam3_lora.config import FLAT_OVERRIDES, Config, load_config, parse_set_overrides

_FLAT_TYPES: dict[str, type] = {
    "batch_size": int,
    "learning_rate": float,
    "weight_decay": float,
    "num_epochs": int,
    "steps": int,
    "gradient_accumulation_steps": int,
    "lora_rank": int,
    "lora_alpha": float,
    "lora_dropout": float,
    "output_dir": str,
    "model": str,
    "family": str,
}


def add_config_arguments(parser: argparse.ArgumentParser, config_required: bool = False) -> None:
    """``--config``, the flat SAM3-LoRA flags, ``--model`` and ``--set section.key=value``."""
    group = parser.add_argument_group("config")
    group.add_argument(
        "--config",
        required=config_required,
        help="YAML config file or preset name (minimal, balanced, full, maximum, quickstart, "
        "sam2_lora, sam2_quickstart)",
    )
    special_help = {
        "model": "hub id, local folder, or an alias: tiny, tiny-random, sam3-size, "
        "sam2.1-{tiny,small,base-plus,large}-size, sam3-tracker-size (the family follows a name "
        "only one family knows)",
        "family": "model family: sam3, sam2, sam3_tracker (sets model.family)",
    }
    for flag, key in FLAT_OVERRIDES.items():
        help_text = special_help.get(flag, f"sets {key}")
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
    """Load the config named by ``--config`` (or ``default_config``) with all overrides applied.

    A ``--model`` that only one family knows (``sam2.1-large-size``, a SAM2 hub id or model
    folder) sets ``model.family`` too, unless the config or ``--family`` sets it.
    """
    overrides: dict[str, Any] = {}
    for flag, key in FLAT_OVERRIDES.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    overrides.update(parse_set_overrides(args.set_overrides))
    path = args.config or default_config
    config = load_config(path, overrides)
    name = overrides.get("model.name_or_path")
    if name and "model.family" not in overrides and "family" not in config.model.model_fields_set:
        family = family_of_name(str(name))
        if family is not None and family != config.model.family:
            config = load_config(path, {**overrides, "model.family": family})
    return config


def family_of_name(name: str) -> str | None:
    """The family a ``--model`` name belongs to when only one family knows it: an alias or hub
    id of one family, or a model folder's ``model_type``."""
    from sam3_lora.models import folder_family
    from sam3_lora.tasks import family_for_name

    if Path(name).expanduser().is_dir():
        return folder_family(Path(name).expanduser())
    return family_for_name(name)
