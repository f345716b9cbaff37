"""``sam3-lora merge``: fold an adapter into its base model and save a plain model folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "merge",
        help="merge an adapter into its base model (a folder Sam3Model / Sam2Model "
        ".from_pretrained loads)",
        description="Load the adapter onto its base model (checked module by module), fold the "
        "LoRA weights in, and write safetensors + config + processor files.",
    )
    parser.add_argument(
        "--adapter", "--weights", dest="adapter", required=True, help="adapter folder or file"
    )
    parser.add_argument("--output", "--output_dir", dest="output", required=True, type=Path)
    parser.add_argument("--model", help="base model (default: the one the adapter was trained on)")
    parser.add_argument("--config", help="training config whose model.name_or_path is the base")
    parser.add_argument(
        "--family",
        choices=("sam3", "sam2", "sam3_tracker"),
        help="base model family (default: the config's, else found from the adapter)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.table import Table

    from sam3_lora.config import load_config
    from sam3_lora.predict.merge import merge_adapter

    config = load_config(args.config) if args.config else None
    base = args.model or (config.model.name_or_path if config else None)
    family = args.family or (config.model.family if config else None)
    result = merge_adapter(args.adapter, args.output, base_model=base, family=family)
    table = Table(title="merged model", show_header=False)
    table.add_column("")
    table.add_column("", justify="left")
    for key, value in result.items():
        table.add_row(key, str(value))
    Console().print(table)
    return 0
