"""The ``sam3-lora`` command line: parses arguments and calls library functions."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from sam3_lora.errors import Sam3LoraError

# Each module exposes ``register(subparsers)``; a subcommand sets ``func`` to a callable
# taking the parsed namespace and returning an exit code.
_COMMAND_MODULES = ("data", "lora_info", "param_groups", "train", "evaluate", "predict", "merge")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="sam3-lora",
        description="Fine-tune SAM3 with LoRA: prepare data, train, evaluate, predict, merge.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(f"sam3_lora.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sam3-lora`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    # In a distributed launch only rank 0 logs information (warnings and errors: every rank).
    rank = int(os.environ.get("RANK", "0") or 0)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO if rank == 0 else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        for noisy in ("accelerate", "matplotlib", "httpx", "huggingface_hub", "PIL"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = int(args.func(args) or 0)
        close_process_group()
        return code
    except Sam3LoraError as error:
        label = "\033[31merror:\033[0m" if sys.stderr.isatty() else "error:"
        print(f"{label} {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def close_process_group() -> None:
    """End a distributed launch's process group before the interpreter exits.

    Left to the interpreter's teardown, the process group's background threads can abort a
    finished process ("terminate called without an active exception", exit code -6), which
    turns a completed run into a failed launch. Only on a normal end: after a lost peer the
    error is reported instead.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
