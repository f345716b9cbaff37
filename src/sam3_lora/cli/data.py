"""``sam3-lora data ...``: create, convert, split, validate, inspect and synthesize datasets."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sam3_lora.cli.data_convert import print_conversions, register_converters
from sam3_lora.errors import ConfigError

console = Console(highlight=False)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command and its subcommands."""
    parser = subparsers.add_parser("data", help="prepare datasets: convert to COCO, validate, ...")
    commands = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    create = commands.add_parser("create", help="make the train/valid/test folder skeleton")
    create.add_argument("--output_dir", type=Path, required=True)
    create.set_defaults(func=_create)

    register_converters(commands)

    split = commands.add_parser("split", help="deterministic train/valid/test split")
    split.add_argument("--data_dir", type=Path, required=True)
    split.add_argument("--ratios", type=float, nargs="+", default=[0.8, 0.1, 0.1])
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--output_dir", type=Path, help="default: re-split data_dir in place")
    split.set_defaults(func=_split)

    validate = commands.add_parser("validate", help="check a dataset; non-zero exit on errors")
    target = validate.add_mutually_exclusive_group(required=True)
    target.add_argument("--data_dir", type=Path)
    target.add_argument(
        "--config", help="check every split a training config uses, with its prompts"
    )
    validate.add_argument("--split")
    validate.add_argument("--fix", type=Path, metavar="OUTPUT", help="write a cleaned copy here")
    validate.add_argument("--no_decode", action="store_true", help="read image headers only")
    validate.add_argument("--max_issues", type=int, default=30, help="issues listed per split")
    validate.set_defaults(func=_validate)

    stats = commands.add_parser("stats", help="images, instances per category, object sizes")
    stats.add_argument("--data_dir", type=Path, required=True)
    stats.add_argument("--split")
    stats.set_defaults(func=_stats)

    preview = commands.add_parser("preview", help="PNG grid of images with ground truth drawn")
    preview.add_argument("--data_dir", type=Path, required=True)
    preview.add_argument("--split")
    preview.add_argument("--output", type=Path, default=Path("preview.png"))
    preview.add_argument("--num_images", type=int, default=16)
    preview.add_argument("--columns", type=int, default=4)
    preview.add_argument("--seed", type=int, default=0)
    preview.set_defaults(func=_preview)

    synth = commands.add_parser("synth", help="generate the synthetic shapes dataset")
    synth.add_argument("--output", "--output_dir", dest="output_dir", type=Path, required=True)
    synth.add_argument("--num_train", type=int, default=200)
    synth.add_argument("--num_val", type=int, default=50)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--style",
        choices=("plain", "shifted", "steel"),
        default="plain",
        help="plain / shifted: coloured shapes; steel: scratches and blobs on brushed metal "
        "(the SAM2 quick start's)",
    )
    synth.add_argument("--image_size", type=int, default=256)
    synth.add_argument(
        "--size_range",
        type=int,
        nargs=2,
        default=None,
        metavar=("MIN", "MAX"),
        help="shape sizes in pixels (default: 40 110 at 256 px, scaled with --image_size)",
    )
    synth.add_argument(
        "--distractors",
        nargs="*",
        default=[],
        metavar="SHAPE",
        help="shapes drawn but never annotated (plain style: star)",
    )
    synth.set_defaults(func=_synth)

    parser.set_defaults(func=lambda args: _help(parser))


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _create(args: argparse.Namespace) -> int:
    from sam3_lora.data.layout import SPLIT_NAMES, create_layout

    created = create_layout(args.output_dir)
    console.print(
        f"[green]dataset skeleton[/green] {args.output_dir}: "
        f"{', '.join(n + '/' for n in SPLIT_NAMES)} README.md ({len(created)} new)"
    )
    return 0


def _split(args: argparse.Namespace) -> int:
    from sam3_lora.data.split import split_dataset

    results = split_dataset(args.data_dir, args.ratios, args.seed, args.output_dir)
    return print_conversions(results, title="split")


def _validate(args: argparse.Namespace) -> int:
    from sam3_lora.data.summary import prompt_table, validation_table
    from sam3_lora.data.validate import fix_dataset, validate_dataset

    if args.config is not None:
        from sam3_lora.config import load_config
        from sam3_lora.data.config_check import validate_config

        if args.fix is not None or args.split is not None:
            raise ConfigError("--fix and --split go with --data_dir, not --config")
        reports = validate_config(load_config(args.config), decode_images=not args.no_decode)
    elif args.fix is not None:
        reports = fix_dataset(args.data_dir, args.fix, args.split)
    else:
        reports = validate_dataset(args.data_dir, args.split, decode_images=not args.no_decode)
    for report in reports:
        if report.note:
            console.print(f"{report.split}: {report.note}", soft_wrap=True)
        for issue in report.issues[: args.max_issues]:
            colour = "red" if issue.severity == "error" else "yellow"
            console.print(
                f"[{colour}]{issue.severity}[/{colour}] {report.annotation_file}: "
                f"{issue.record}: {issue.message} [dim]({issue.code})[/dim]",
                soft_wrap=True,
                markup=True,
                highlight=False,
            )
        hidden = len(report.issues) - args.max_issues
        if hidden > 0:
            console.print(
                f"... and {hidden} more issues in {report.annotation_file}", soft_wrap=True
            )
    for report in reports:
        if report.prompts:
            console.print(prompt_table(report))
        if args.config is not None:
            from sam3_lora.data.config_check import negative_notes, negative_table

            table = negative_table(report)
            if table is not None:
                console.print(table)
            for line in negative_notes(report):
                console.print(line, soft_wrap=True, highlight=False, markup=False)
    console.print(validation_table(reports))
    errors = sum(len(report.errors) for report in reports)
    if args.fix is not None:
        console.print(f"[green]cleaned copy written to {args.fix}[/green]; the input is unchanged")
        return 0
    return 1 if errors else 0


def _stats(args: argparse.Namespace) -> int:
    from sam3_lora.data.inspect import dataset_stats, size_bin_labels

    all_stats = dataset_stats(args.data_dir, args.split)
    summary = Table(title="dataset")
    for column in ("split", "images", "no objects", "instances", "box only", "crowd"):
        summary.add_column(column, justify="left" if column == "split" else "right")
    for stats in all_stats:
        summary.add_row(
            stats.split,
            str(stats.images),
            str(stats.images_without_objects),
            str(stats.instances),
            str(stats.box_only),
            str(stats.crowd),
        )
    console.print(summary)
    names = sorted({name for stats in all_stats for name in stats.per_category})
    per_category = Table(title="instances per category")
    per_category.add_column("category")
    for stats in all_stats:
        per_category.add_column(stats.split, justify="right")
    for name in names:
        per_category.add_row(name, *(str(s.per_category.get(name, 0)) for s in all_stats))
    console.print(per_category)
    sizes = Table(title="object size (sqrt of area, pixels)")
    sizes.add_column("size")
    for stats in all_stats:
        sizes.add_column(stats.split, justify="right")
    for row, label in enumerate(size_bin_labels()):
        sizes.add_row(label, *(str(s.size_histogram[row]) for s in all_stats))
    console.print(sizes)
    return 0


def _preview(args: argparse.Namespace) -> int:
    from sam3_lora.data.inspect import render_preview

    path = render_preview(
        args.data_dir,
        args.output,
        split=args.split,
        num_images=args.num_images,
        columns=args.columns,
        seed=args.seed,
    )
    console.print(f"[green]preview[/green] written to {path}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from sam3_lora.data.synthetic import generate_shapes_dataset

    if args.style == "steel":
        from sam3_lora.data.synthetic_steel import generate_steel_dataset

        path = generate_steel_dataset(
            args.output_dir,
            num_train=args.num_train,
            num_val=args.num_val,
            seed=args.seed,
            image_size=args.image_size,
        )
        console.print(f"[green]synthetic dataset[/green] written to {path}")
        return 0
    path = generate_shapes_dataset(
        args.output_dir,
        num_train=args.num_train,
        num_val=args.num_val,
        seed=args.seed,
        style=args.style,
        image_size=args.image_size,
        size_range=tuple(args.size_range) if args.size_range else None,
        distractors=tuple(args.distractors),
    )
    console.print(f"[green]synthetic dataset[/green] written to {path}")
    return 0
