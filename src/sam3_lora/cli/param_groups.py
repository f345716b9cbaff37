"""``sam3-lora param-groups``: the optimizer groups and learning rates a run of a config uses."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from sam3_lora.cli.common import add_config_arguments, config_from_args
from sam3_lora.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "param-groups",
        help="print the AdamW parameter groups and learning rates of a training run",
        description="Build the task as `train` would (LoRA or full fine-tuning) and print its "
        "optimizer groups: parameters, peak learning rate, weight decay. --model sam3-size "
        "uses the released SAM3 architecture without weights.",
    )
    add_config_arguments(parser)
    parser.set_defaults(func=run)


def group_table(rows: list[tuple[str, int, int, float, float]], title: str) -> Table:
    """``(name, tensors, parameters, lr, weight decay)`` rows as a table of 80 columns."""
    table = Table(title=title, caption="lr: the peak; the schedule scales every group alike")
    for header in ("group", "tensors", "parameters", "lr", "wd"):
        table.add_column(header, justify="left" if header == "group" else "right")
    for name, tensors, parameters, lr, weight_decay in rows:
        table.add_row(name, str(tensors), f"{parameters:,}", f"{lr:.3e}", f"{weight_decay:g}")
    table.add_section()
    table.add_row(
        f"{len(rows)} groups",
        str(sum(r[1] for r in rows)),
        f"{sum(r[2] for r in rows):,}",
        "",
        "",
        style="bold",
    )
    return table


def run(args: argparse.Namespace) -> int:
    from sam3_lora.engine.optim import group_summary
    from sam3_lora.models import load_model

    config = config_from_args(args)
    loaded = load_model(config.model.name_or_path, config.model.family)
    if loaded.spec.build_task is None:
        raise ConfigError(f"model.family `{config.model.family}` has no trainable task yet")
    task = loaded.spec.build_task(config, loaded)
    rows = group_summary(task.parameter_groups())
    named = task.network.named_parameters()
    total = sum(p.numel() for name, p in named if "lora_" not in name)  # the model's own
    mode = config.finetune.mode
    title = f"{'LoRA' if mode == 'lora' else 'full fine-tuning'} on {loaded.source}"
    console = Console(width=80)
    console.print(group_table(rows, title))
    console.print(f"model parameters: {total:,}; trained: {sum(r[2] for r in rows):,}")
    return 0
