"""``sam3-lora data ...``: create, convert, split, validate, inspect and synthesize datasets."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console(highlight=False)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command and its subcommands."""
    parser = subparsers.add_parser("data", help="prepare datasets: convert to COCO, validate, ...")
    commands = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    create = commands.add_parser("create", help="make the train/valid/test folder skeleton")
    create.add_argument("--output_dir", type=Path, required=True)
    create.set_defaults(func=_create)

    coco = commands.add_parser("coco", help="import a COCO file (ids re-indexed)")
    coco.add_argument("--coco_json", type=Path, required=True)
    coco.add_argument("--images_dir", type=Path, help="default: the JSON's folder")
    _output_args(coco)
    coco.add_argument("--rle", action="store_true", help="store every mask as RLE")
    coco.add_argument(
        "--skip_bad_images",
        action="store_true",
        help="leave out missing / unreadable images instead of stopping",
    )
    coco.set_defaults(func=_coco)

    yolo = commands.add_parser("yolo", help="YOLO segmentation or box labels")
    yolo.add_argument("--yolo_dir", type=Path, required=True)
    names = yolo.add_mutually_exclusive_group()
    names.add_argument("--classes", help='comma-separated names, e.g. "person,car,dog"')
    names.add_argument("--data_yaml", type=Path, help="Ultralytics data.yaml with 'names'")
    _output_args(
        yolo,
        split_default=None,
        split_help="default: keep train/valid/test sub-folders, else train",
    )
    yolo.set_defaults(func=_yolo)

    per_image = commands.add_parser("json", help="SAM3-LoRA per-image JSON (bboxes + masks)")
    per_image.add_argument("--input_dir", type=Path, required=True)
    per_image.add_argument("--class_name", default="object", help="class of unlabelled objects")
    _output_args(per_image)
    per_image.set_defaults(func=_per_image_json)

    labelme = commands.add_parser("labelme", help="LabelMe JSON files")
    labelme.add_argument("--input_dir", type=Path, required=True)
    _output_args(labelme)
    labelme.set_defaults(func=_labelme)

    via = commands.add_parser("via", help="VGG Image Annotator JSON")
    via.add_argument("--via_json", type=Path, required=True)
    via.add_argument("--images_dir", type=Path, help="default: the JSON's folder")
    via.add_argument("--class_attribute", help="region attribute holding the class")
    via.add_argument("--class_name", default="object", help="class of regions without one")
    via.add_argument("--skip_missing", action="store_true")
    _output_args(via)
    via.set_defaults(func=_via)

    masks = commands.add_parser("masks", help="mask PNGs or a Severstal run-length CSV")
    masks.add_argument("--images_dir", type=Path, required=True)
    source = masks.add_mutually_exclusive_group(required=True)
    source.add_argument("--masks_dir", type=Path, help="mask PNGs named like the images")
    source.add_argument("--rle_csv", type=Path, help="ImageId,ClassId,EncodedPixels CSV")
    masks.add_argument("--mask_type", choices=("binary", "semantic", "instance"), default="binary")
    masks.add_argument("--classes", help="comma-separated names, index = pixel value")
    masks.add_argument(
        "--class_names",
        type=Path,
        help="names file (class_names.txt, labels.txt or CVAT labelmap.txt)",
    )
    masks.add_argument(
        "--class_masks_dir", type=Path, help="semantic masks for --mask_type instance"
    )
    masks.add_argument("--class_name", default="object", help="class for binary masks")
    masks.add_argument("--background", type=int, default=0, help="background pixel value")
    masks.add_argument("--ignore_value", type=int, default=255, help="pixels of no object")
    masks.add_argument("--min_area", type=int, default=10, help="smallest instance (pixels)")
    masks.add_argument("--skip_missing", action="store_true")
    _output_args(masks)
    masks.set_defaults(func=_masks)

    hf = commands.add_parser("hf", help="a Hugging Face datasets dataset (hub or local folder)")
    hf.add_argument("--dataset", required=True, help="hub name or save_to_disk folder")
    hf.add_argument("--split", help="one split only (default: all)")
    hf.add_argument("--output_dir", type=Path, required=True)
    hf.add_argument("--image_column", default="image")
    hf.add_argument("--objects_column", default="objects")
    hf.add_argument("--bbox_format", choices=("xywh", "xyxy"), default="xywh")
    hf.set_defaults(func=_hf)

    split = commands.add_parser("split", help="deterministic train/valid/test split")
    split.add_argument("--data_dir", type=Path, required=True)
    split.add_argument("--ratios", type=float, nargs="+", default=[0.8, 0.1, 0.1])
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--output_dir", type=Path, help="default: re-split data_dir in place")
    split.set_defaults(func=_split)

    validate = commands.add_parser("validate", help="check a dataset; non-zero exit on errors")
    validate.add_argument("--data_dir", type=Path, required=True)
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


def _output_args(
    parser: argparse.ArgumentParser, split_default: str | None = "train", split_help: str = ""
) -> None:
    parser.add_argument("--output_dir", type=Path, required=True, help="dataset folder")
    parser.add_argument("--split", default=split_default, help=split_help or "train/valid/test")
    parser.add_argument(
        "--link",
        action="store_true",
        help="hard-link images instead of copying (copies across filesystems)",
    )


def _image_mode(args: argparse.Namespace) -> str:
    return "link" if getattr(args, "link", False) else "copy"


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


def _coco(args: argparse.Namespace) -> int:
    from sam3_lora.data.convert.coco import import_coco

    result = import_coco(
        args.coco_json,
        args.images_dir,
        args.output_dir,
        args.split,
        mask_format="rle" if args.rle else "keep",
        image_mode=_image_mode(args),
        skip_bad_images=args.skip_bad_images,
    )
    return _print_conversions([result])


def _yolo(args: argparse.Namespace) -> int:
    from sam3_lora.data.convert.yolo import convert_yolo

    results = convert_yolo(
        args.yolo_dir,
        args.output_dir,
        args.split,
        classes=args.classes,
        data_yaml=args.data_yaml,
        image_mode=_image_mode(args),
    )
    return _print_conversions(results)


def _per_image_json(args: argparse.Namespace) -> int:
    from sam3_lora.data.convert.per_image_json import convert_per_image_json

    result = convert_per_image_json(
        args.input_dir,
        args.output_dir,
        args.split,
        class_name=args.class_name,
        image_mode=_image_mode(args),
    )
    return _print_conversions([result])


def _labelme(args: argparse.Namespace) -> int:
    from sam3_lora.data.convert.labelme import convert_labelme

    result = convert_labelme(
        args.input_dir, args.output_dir, args.split, image_mode=_image_mode(args)
    )
    return _print_conversions([result])


def _via(args: argparse.Namespace) -> int:
    from sam3_lora.data.convert.via import convert_via

    result = convert_via(
        args.via_json,
        args.images_dir,
        args.output_dir,
        args.split,
        class_attribute=args.class_attribute,
        class_name=args.class_name,
        image_mode=_image_mode(args),
        skip_missing=args.skip_missing,
    )
    return _print_conversions([result])


def _masks(args: argparse.Namespace) -> int:
    from sam3_lora.data.convert import masks

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    colours = None
    if args.class_names is not None:
        classes, colours = masks.load_class_names(args.class_names)
    if args.rle_csv is not None:
        result = masks.convert_rle_csv(
            args.rle_csv,
            args.images_dir,
            args.output_dir,
            args.split,
            classes=classes,
            min_area=args.min_area,
            skip_missing=args.skip_missing,
            image_mode=_image_mode(args),
        )
    else:
        result = masks.convert_masks(
            args.images_dir,
            args.masks_dir,
            args.output_dir,
            args.split,
            mask_type=args.mask_type,
            classes=classes,
            colours=colours,
            class_masks_dir=args.class_masks_dir,
            class_name=args.class_name,
            background=args.background,
            ignore_value=args.ignore_value,
            min_area=args.min_area,
            image_mode=_image_mode(args),
        )
    return _print_conversions([result])


def _hf(args: argparse.Namespace) -> int:
    from sam3_lora.data.convert.hf import convert_hf

    results = convert_hf(
        args.dataset,
        args.output_dir,
        args.split,
        image_column=args.image_column,
        objects_column=args.objects_column,
        bbox_format=args.bbox_format,
    )
    return _print_conversions(results)


def _split(args: argparse.Namespace) -> int:
    from sam3_lora.data.split import split_dataset

    results = split_dataset(args.data_dir, args.ratios, args.seed, args.output_dir)
    return _print_conversions(results, title="split")


def _validate(args: argparse.Namespace) -> int:
    from sam3_lora.data.validate import fix_dataset, validate_dataset

    if args.fix is not None:
        reports = fix_dataset(args.data_dir, args.fix, args.split)
    else:
        reports = validate_dataset(args.data_dir, args.split, decode_images=not args.no_decode)
    table = Table(title="validate")
    for column in ("file", "images", "annotations", "categories", "errors", "warnings"):
        table.add_column(column, justify="left" if column == "file" else "right")
    for report in reports:
        for issue in report.issues[: args.max_issues]:
            colour = "red" if issue.severity == "error" else "yellow"
            console.print(
                f"[{colour}]{issue.severity}[/{colour}] {report.annotation_file}: "
                f"{issue.record}: {issue.message} [dim]({issue.code})[/dim]",
                soft_wrap=True,
            )
        hidden = len(report.issues) - args.max_issues
        if hidden > 0:
            console.print(
                f"... and {hidden} more issues in {report.annotation_file}", soft_wrap=True
            )
        table.add_row(
            str(report.annotation_file),
            str(report.images),
            str(report.annotations),
            str(report.categories),
            str(len(report.errors)),
            str(len(report.warnings)),
        )
    console.print(table)
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


def _print_conversions(results: Sequence, title: str = "converted") -> int:
    table = Table(title=title)
    for column in (
        "annotation file",
        "images",
        "annotations",
        "box only",
        "categories",
        "skipped",
        "warnings",
    ):
        table.add_column(column, justify="left" if column == "annotation file" else "right")
    for result in results:
        table.add_row(
            str(result.annotation_file),
            str(result.images),
            str(result.annotations),
            str(result.box_only),
            str(result.categories),
            str(result.skipped),
            str(len(result.warnings)),
        )
    console.print(table)
    return 0
