"""Build the tiny pretrained SAM2 shipped in ``assets/tiny-sam2``, in one command.

A ``Sam2Model`` of the released classes with a small config (``tiny_sam2_config``: 0.35 M
parameters, 128 px), trained from scratch, every weight trainable, on the synthetic shapes of
``sam3_lora.data.synthetic`` (plain style: circles, rectangles, triangles on plain backgrounds)
with the project's own trainer, Meta's SAM2.1 prompt sampling (a noisy box or a click, then
corrective clicks) and loss, one cosine schedule. It segments the object under a box or a click.
Runs on a CPU (``--threads 1`` on a shared machine) or a GPU; a killed build resumes from its
last checkpoint when started again with the same ``--work_dir``.

    python scripts/build_tiny_sam2.py --threads 1

At the end it writes the model folder (``config.json``, ``model.safetensors``, processor files)
and ``build_info.json``: the arguments, the validation numbers (box and single-click mIoU /
Dice on the build's validation split) and the build time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sam3_lora.config import Config, validate_config
from sam3_lora.engine.trainer import Trainer
from sam3_lora.tasks import tiny_build
from sam3_lora.tasks.promptable.loss import PromptableLoss
from sam3_lora.tasks.promptable.module import PromptableModel
from sam3_lora.tasks.promptable.recipe import MODULE_SETTINGS, build_promptable_datasets
from sam3_lora.tasks.promptable.spec import ImageInput
from sam3_lora.tasks.promptable.task import PromptableTask
from sam3_lora.tasks.promptable.tiny import create_tiny_sam2

SHIPPED_NAME = "sam3-lora/tiny-sam2"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="assets/tiny-sam2")
    parser.add_argument("--work_dir", default="outputs/tiny-sam2-build")
    parser.add_argument("--data_dir", default="data/shapes-tiny-sam2-build")
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--warmup_steps", type=int, default=200)
    parser.add_argument("--num_train", type=int, default=4000)
    parser.add_argument("--num_val", type=int, default=64)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument(
        "--correction_rounds",
        type=int,
        default=1,
        help="corrective clicks per object after its first prompt (Meta: 7; fewer is faster)",
    )
    parser.add_argument(
        "--gate_masks",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="Meta's object-score gating in training (masks of objects scored absent set to "
        "-1024). Off by default: from scratch, one dip of the object score below 0 cuts every "
        "mask gradient and the masks stop learning",
    )
    parser.add_argument("--eval_steps", type=int, default=500)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = default")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def build_config(args: argparse.Namespace) -> Config:
    return validate_config(
        {
            "model": {"family": "sam2", "name_or_path": "tiny-random"},
            "training": tiny_build.training_settings(args, warmup_steps=args.warmup_steps),
            "data": {
                "synthetic": tiny_build.synthetic_settings(args, image_size=args.resolution),
                "max_prompts_per_image": 8,
            },
            "loss": {
                "correction_rounds": args.correction_rounds,
                "gate_masks_by_object_score": args.gate_masks,
            },
            "evaluation": {"batch_size": 16},
            "output": tiny_build.output_settings(args),
        },
        source="build_tiny_sam2",
    )


def main() -> None:
    args = parse_args()
    tiny_build.start_build(args)
    config = build_config(args)
    started = time.perf_counter()
    loaded = create_tiny_sam2(seed=args.seed, resolution=args.resolution)
    network = loaded.model
    for parameter in network.parameters():
        parameter.requires_grad_(True)
    settings = config.loss.model_dump(exclude={"type"})
    module = PromptableModel(network, **{k: settings.pop(k) for k in MODULE_SETTINGS})
    task = PromptableTask(module, PromptableLoss(**settings))
    train, valid = build_promptable_datasets(config, ImageInput.from_processor(loaded.processor))
    trainer = Trainer(config, task, train, valid)
    summary = tiny_build.train_resuming(trainer, args)
    build_seconds = time.perf_counter() - started

    output = Path(args.output)
    model = tiny_build.save_built_model(trainer, loaded.processor, output, SHIPPED_NAME)
    info = {
        "description": "tiny SAM2 (Sam2Model classes, small config) trained from scratch on "
        "synthetic plain shapes with box and click prompts by one run of "
        "scripts/build_tiny_sam2.py",
        "parameters": sum(p.numel() for p in model.parameters()),
        "resolution": args.resolution,
        "steps": summary["steps"],
        "images_seen": trainer.state.images_seen,
        "validation": {
            "prompts": "box: each object's box; point: one click at its centre-most pixel",
            **summary["final_metrics"],
        },
        **tiny_build.build_facts(trainer, build_seconds, args),
    }
    tiny_build.write_build_info(output, info)


if __name__ == "__main__":
    main()
