"""Build the tiny pretrained SAM3 shipped in ``assets/tiny-sam3``, in one command.

A ``Sam3Model`` of the released classes with a small config (see ``tiny_sam3_config``), trained
from scratch, every weight trainable, on synthetic shapes (circle, rectangle, triangle) with the
project's own trainer and SAM3 loss, one cosine schedule. It segments shapes from their names and
answers "none" for a shape name that is absent. Runs on a CPU (about 80 minutes on one core of
this project's 2-core machine) or a GPU; a killed build resumes from its last checkpoint when
started again with the same ``--work_dir``.

    python scripts/build_tiny_sam3.py --threads 1

At the end it measures the model's operating point on its own validation split: the score
threshold with the best gIoU (mean union-mask IoU over every prompt, a present prompt scoring its
IoU and an absent one 1 if nothing passes), recorded in ``build_info.json`` with the whole sweep.
The model's scores converge to its box IoU (Meta's IoU-aware classification), about 0.6 at this
size, so 0.5 is not the natural threshold of a model this small. ``--measure_only`` records the
operating point of an existing ``--output`` folder without training.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from transformers import Sam3Model

from sam3_lora.config import validate_config
from sam3_lora.data.coco import CocoDataset
from sam3_lora.data.synthetic import generate_shapes_dataset
from sam3_lora.engine.trainer import Trainer
from sam3_lora.evaluation.runner import evaluate_dataset
from sam3_lora.predict.inference import SAM3LoRAInference
from sam3_lora.tasks import tiny_build
from sam3_lora.tasks.concept.loss import LossWeights, Sam3ConceptLoss
from sam3_lora.tasks.concept.module import ConceptModel
from sam3_lora.tasks.concept.recipe import build_concept_datasets
from sam3_lora.tasks.concept.task import ConceptTask
from sam3_lora.tasks.concept.tiny import random_tiny_sam3

BUILD_IMAGE_SIZE = 256
SHIPPED_NAME = "sam3-lora/tiny-sam3"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="assets/tiny-sam3")
    parser.add_argument("--work_dir", default="outputs/tiny-sam3-build")
    parser.add_argument("--data_dir", default="data/shapes-tiny-build")
    parser.add_argument("--steps", type=int, default=16000)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--learning_rate", type=float, default=3e-4)
    parser.add_argument("--num_train", type=int, default=8000)
    parser.add_argument("--num_val", type=int, default=50)
    parser.add_argument("--eval_steps", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--aux_layers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="supervise every decoder layer, as Meta does (--no-aux_layers: the final one only)",
    )
    parser.add_argument(
        "--augment",
        action="store_true",
        help="Meta's random resize + pad (off: plain resize; at 224 px the random down-scaling "
        "makes 20 px shapes sub-token and the tiny model learns far slower)",
    )
    parser.add_argument("--init_from", help="start from this model folder instead of random")
    parser.add_argument(
        "--distractors",
        nargs="*",
        default=[],
        help="shapes drawn in the build images but never named (e.g. star): the model sees "
        "them and learns they are none of its categories",
    )
    parser.add_argument(
        "--measure_only",
        action="store_true",
        help="no training: measure the operating point of --output and add it to its "
        "build_info.json",
    )
    args = parser.parse_args()
    tiny_build.start_build(args)
    if args.measure_only:
        record_operating_point(Path(args.output), args)
        return

    config = validate_config(
        {
            "model": {"name_or_path": "tiny-random"},
            "training": tiny_build.training_settings(args, warmup_steps=200),
            "data": {
                "synthetic": {
                    **tiny_build.synthetic_settings(args, image_size=BUILD_IMAGE_SIZE),
                    "distractors": args.distractors,
                },
                "num_negative_prompts": 1,
                "augment": args.augment,
            },
            "loss": {"aux_layers": args.aux_layers},
            "evaluation": {"batch_size": 8},
            "output": tiny_build.output_settings(args),
        },
        source="build_tiny_sam3",
    )
    started = time.perf_counter()
    network, processor = random_tiny_sam3(seed=args.seed)
    if args.init_from:
        network = Sam3Model.from_pretrained(args.init_from)
    for parameter in network.parameters():
        parameter.requires_grad_(True)
    task = ConceptTask(
        ConceptModel(network, processor.tokenizer),
        Sam3ConceptLoss(LossWeights(**config.loss.model_dump(exclude={"type"}))),
        score_threshold=config.evaluation.score_threshold,
        mask_threshold=config.evaluation.mask_threshold,
    )
    resolution = int(network.config.vision_config.image_size)
    train_dataset, valid_dataset = build_concept_datasets(config, resolution)
    trainer = Trainer(config, task, train_dataset, valid_dataset)
    summary = tiny_build.train_resuming(trainer, args)
    build_seconds = time.perf_counter() - started

    output = Path(args.output)
    model = tiny_build.save_built_model(trainer, processor, output, SHIPPED_NAME)
    info = {
        "description": "tiny SAM3 (Sam3Model classes, small config) trained from scratch on "
        "synthetic shapes by one run of scripts/build_tiny_sam3.py",
        "categories": ["circle", "rectangle", "triangle"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": summary["steps"],
        "images_seen": trainer.state.images_seen,
        "validation": summary["final_metrics"],
        **tiny_build.build_facts(trainer, build_seconds, args),
        "init_from_build_info": _read_build_info(args.init_from),
    }
    info["operating_point"] = measure_operating_point(output, Path(args.data_dir) / "valid")
    tiny_build.write_build_info(output, info)


def measure_operating_point(model_dir: Path, valid_dir: Path) -> dict:
    """The score threshold with the best gIoU on ``valid_dir``, and the sweep it came from."""
    predictor = SAM3LoRAInference(model=str(model_dir), device="cpu", batch_size=8)
    coco = CocoDataset.from_split_dir(valid_dir)
    metrics, _ = evaluate_dataset(predictor, coco, negative_prompts=5, batch_size=8)
    sweep = metrics["models"]["base"]["threshold_sweep"]
    best = max(sweep, key=lambda row: row["giou"])
    keys = ("threshold", "giou", "miou", "absent_fire_rate", "cgF1")
    return {
        "score_threshold": best["threshold"],
        "chosen_by": f"best gIoU on the build's {len(coco)} validation images (every category "
        "and 5 absent concepts prompted per image)",
        "sweep": [{k: round(row[k], 4) for k in keys} for row in sweep],
    }


def record_operating_point(output: Path, args: argparse.Namespace) -> None:
    """Add the operating point to an existing build's ``build_info.json``.

    The validation images depend only on the seed, style and index, so regenerating the split
    (with one training image) reproduces the build's validation set exactly.
    """
    info_file = output / "build_info.json"
    info = json.loads(info_file.read_text(encoding="utf-8"))
    built = info["args"]
    data_dir = Path(args.work_dir) / "operating-point-data"
    generate_shapes_dataset(
        data_dir,
        num_train=1,
        num_val=built["num_val"],
        seed=built["seed"],
        style=tiny_build.BUILD_STYLE,
        image_size=BUILD_IMAGE_SIZE,
        distractors=tuple(built.get("distractors", ())),
        progress=False,
    )
    info["operating_point"] = measure_operating_point(output, data_dir / "valid")
    info_file.write_text(json.dumps(info, indent=2), encoding="utf-8")
    print(json.dumps(info["operating_point"], indent=2))


def _read_build_info(folder: str | None) -> dict | None:
    if folder is None:
        return None
    state_file = Path(folder) / "trainer_state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    keep = ("global_step", "images_seen", "best_metric")
    return {"folder": folder, **{k: state[k] for k in keep if k in state}}


if __name__ == "__main__":
    main()
