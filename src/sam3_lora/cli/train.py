"""``sam3-lora train``: fine-tune SAM3 with LoRA as a config says (default: the quick start)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sam3_lora.cli.common import add_config_arguments, config_from_args

DEFAULT_CONFIG = "quickstart"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a LoRA adapter (default config: the offline quick start)",
        description="Train a SAM3 LoRA adapter on a COCO dataset. Without --config, runs the "
        "offline quick start (configs/quickstart.yaml) on the shipped tiny SAM3.",
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="CHECKPOINT",
        help="continue from the latest checkpoint in output_dir (layout sam2_lora: the newest "
        "run folder's latest_lora_step*), or from CHECKPOINT (a checkpoint or run folder)",
    )
    parser.add_argument(
        "--eval-only",
        "--eval_only",
        dest="eval_only",
        action="store_true",
        help="evaluate (output_dir/final, the newest run's final_lora_step*, or --adapter) "
        "instead of training",
    )
    parser.add_argument("--adapter", help="with --eval-only: the adapter folder to evaluate")
    parser.add_argument(
        "--num_gpus",
        type=int,
        metavar="N",
        help="run on N processes of this machine (accelerate launch on N GPUs; on a machine "
        "without GPUs, N CPU processes with gloo). Several machines: see the README",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args, default_config=DEFAULT_CONFIG)
    if args.num_gpus is not None and args.num_gpus > 1 and "LOCAL_RANK" not in os.environ:
        from sam3_lora.launch import relaunch, without_option

        return relaunch(args.num_gpus, without_option(args.argv, "--num_gpus"))
    if args.eval_only:
        from sam3_lora.tasks import get_spec
        from sam3_lora.training import final_weights

        adapter = Path(args.adapter) if args.adapter else final_weights(config)
        if get_spec(config.model.family).task == "promptable":
            from sam3_lora.evaluation.promptable import evaluate_promptable_from_config

            # a run folder (sam2_lora layout) keeps its evaluation: <run>/eval-valid
            run_folder = adapter.parent if adapter.name.startswith("final_lora_step") else None
            evaluate_promptable_from_config(
                config,
                adapter,
                compare_base=True,
                output_dir=run_folder / "eval-valid" if run_folder else None,
            )
            return 0
        from sam3_lora.evaluation.runner import evaluate_from_config

        evaluate_from_config(config, adapter, compare_base=True)
        return 0
    from sam3_lora.training import SAM3TrainerNative

    resume = args.resume if args.resume in (None, True) else Path(args.resume)
    SAM3TrainerNative(config).train(resume=resume)
    return 0
