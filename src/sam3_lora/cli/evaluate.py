"""``sam3-lora evaluate``: COCO AP, cgF1, mIoU / Dice and prompt following on a split."""

from __future__ import annotations

import argparse

from sam3_lora.cli.common import add_config_arguments, config_from_args
from sam3_lora.config import Config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate an adapter (and the base model) on a split: mAP, cgF1, mIoU, reports "
        "(SAM2: mIoU, Dice, boundary F1 for box, 1-click and 3-click prompts)",
        description="Prompt every category (and --negative_prompts absent concepts) on every "
        "image of the split; report COCO AP / AR (segm, bbox), SAM3's cgF1, mask mIoU / Dice "
        "and how often the model fires on concepts that are not there. Writes metrics.json, "
        "report.md and a self-contained report.html into --output_dir "
        "(default: <output.output_dir>/eval-<split>).",
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--adapter",
        "--weights",
        dest="adapter",
        help="adapter folder (or its adapter_model.safetensors) or a merged model folder; "
        "omitted: the base model alone",
    )
    parser.add_argument("--split", default="valid", choices=("train", "valid", "test"))
    parser.add_argument(
        "--compare-base",
        "--compare_base",
        dest="compare_base",
        action="store_true",
        help="also evaluate the base model and print both side by side with the difference",
    )
    parser.add_argument(
        "--negative_prompts",
        type=int,
        metavar="N",
        help="absent concepts prompted per image (default: evaluation.num_negative_prompts)",
    )
    parser.add_argument("--threshold", type=float, help="score threshold (detection x presence)")
    parser.add_argument("--mask_threshold", type=float, help="mask probability threshold")
    parser.add_argument("--max_images", type=int, help="evaluate the first N images only")
    parser.add_argument("--gallery", type=int, default=8, help="worst images shown in the report")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sam3_lora.evaluation.runner import evaluate_from_config
    from sam3_lora.tasks import get_spec

    output_dir = args.output_dir
    args.output_dir = None  # the report folder, not output.output_dir
    config = config_from_args(args)
    if get_spec(config.model.family).task == "promptable":
        return _run_promptable(args, config, output_dir)
    if args.threshold is not None:
        config.evaluation.score_threshold = args.threshold
    if args.mask_threshold is not None:
        config.evaluation.mask_threshold = args.mask_threshold
    evaluate_from_config(
        config,
        args.adapter,
        split=args.split,
        compare_base=args.compare_base,
        output_dir=output_dir,
        negative_prompts=args.negative_prompts,
        max_images=args.max_images,
        gallery_size=args.gallery,
    )
    return 0


def _run_promptable(args: argparse.Namespace, config: Config, output_dir: str | None) -> int:
    """SAM2 / SAM3 tracker: every instance prompted with its box, one click and three clicks."""
    from sam3_lora.errors import ConfigError
    from sam3_lora.evaluation.promptable import evaluate_promptable_from_config

    for flag, value in (
        ("--negative_prompts", args.negative_prompts),
        ("--threshold", args.threshold),
    ):
        if value is not None:
            raise ConfigError(
                f"{flag} is a SAM3 option; {config.model.family} masks are thresholded with "
                "--mask_threshold"
            )
    if args.mask_threshold is not None:
        config.evaluation.mask_threshold = args.mask_threshold
    evaluate_promptable_from_config(
        config,
        args.adapter,
        split=args.split,
        compare_base=args.compare_base,
        output_dir=output_dir,
        max_images=args.max_images,
        gallery_size=args.gallery,
    )
    return 0
