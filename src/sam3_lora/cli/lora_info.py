"""``sam3-lora lora-info``: where LoRA goes in SAM3 for a config, and how big the adapter is."""

from __future__ import annotations

import argparse

from rich.console import Console

from sam3_lora.cli.common import add_config_arguments, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "lora-info",
        help="print adapted modules and trainable parameters per model component",
        description="Inject LoRA as the config says and print a table per component. "
        "--model sam3-size builds the released SAM3 architecture without weights.",
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--list-modules", action="store_true", help="also list every adapted module"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sam3_lora.lora import (
        apply_lora_to_model,
        parameter_report,
        parameter_table,
        resolve_targets,
    )
    from sam3_lora.models import load_model

    config = config_from_args(args)
    loaded = load_model(config.model.name_or_path, config.model.family)
    targets = resolve_targets(loaded.model, config.lora, loaded.spec)
    model = apply_lora_to_model(loaded.model, config.lora)
    report = parameter_report(model, loaded.spec)
    console = Console()
    if args.list_modules:
        for component, names in targets.by_component().items():
            for name in names:
                console.print(f"{component:18s} {name}")
    title = (
        f"LoRA on {loaded.source}: rank {config.lora.rank}, alpha {config.lora.alpha:g}, "
        f"{', '.join(config.lora.components(loaded.spec.components))}"
    )
    console.print(parameter_table(report, title=title))
    if config.finetune.mode == "full":
        console.print(
            "finetune.mode is full: no LoRA is trained; `sam3-lora param-groups` prints the "
            "groups and learning rates of the run"
        )
    return 0
