"""``sam3-lora merge``: fold an adapter into its base model and save a plain model folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "merge",
        help="merge an adapter into its base model (a folder Sam3Model.from_pretrained loads)",
        description="Load the adapter onto its base model (checked module by module), fold the "
        "LoRA weights in, and write safetensors + config + processor files.",
    )
    parser.add_argument(
        "--adapter", "--weights", dest="adapter", required=True, help="adapter folder or file"
    )
    parser.add_argument("--output", "--output_dir", dest="output", required=True, type=Path)
    parser.add_argument("--model", help="base model (default: the one the adapter was trained on)")
    parser.add_argument("--config", help="training config whose model.name_or_path is the base")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.table import Table

    from sam3_lora.config import load_config
    from sam3_lora.predict.merge import merge_adapter

    base = args.model or (load_config(args.config).model.name_or_path if args.config else None)
    result = merge_adapter(args.adapter, args.output, base_model=base)
    table = Table(title="merged model", show_header=False)
    table.add_column("")
    table.add_column("", justify="left")
    for key, value in result.items():
        table.add_row(key, str(value))
    Console().print(table)
    return 0
