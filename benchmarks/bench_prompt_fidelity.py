"""Prompt fidelity on the tiny SAM3: retention with and without verified negatives, and what the
verification pass costs next to the quick start.

``retention``: the tiny SAM3 knows circle, rectangle and triangle. It is adapted on plain shapes
where only circles are annotated (rectangles and triangles are drawn, unannotated, and their names
are in the negative vocabulary), once with ``data.verify_negatives`` and once without; both
adapters are then evaluated on the validation images (negatives verified, retention prompts: the
concepts outside the dataset the base finds there).

``cost``: the verification pass on the quick start's data (1,000 + 50 images, the built-in
vocabulary), fresh and from its cache; then the quick start (its first ``--steps`` steps, or all
800 with ``--full``) with verification on and off, timed end to end, with both runs' first and
last validation.

    python benchmarks/bench_prompt_fidelity.py retention --steps 300
    python benchmarks/bench_prompt_fidelity.py retention --variants "verified, lr 1e-4"
    python benchmarks/bench_prompt_fidelity.py cost --steps 200
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sam3_lora.config import Config, load_config
from sam3_lora.data.subset import keep_categories
from sam3_lora.data.synthetic import generate_shapes_dataset
from sam3_lora.training import SAM3TrainerNative

console = Console()
VOCABULARY = ("rectangle", "triangle", "person", "car", "tree", "dog")
TINY_THRESHOLD = 0.3  # the tiny SAM3's operating point (docs/tiny-sam3.md)
#: Runs of ``retention``: name -> (data.verify_negatives, other overrides of the quick start's).
VARIANTS: dict[str, tuple[bool, dict[str, Any]]] = {
    "verified": (True, {}),
    "unverified": (False, {}),
    "unverified, no text LoRA": (False, {"lora.apply_to_text_encoder": False}),
    "verified, lr 1e-4": (True, {"training.learning_rate": 1e-4}),
    "unverified, lr 1e-4": (False, {"training.learning_rate": 1e-4}),
    "verified, vision + mask decoder": (
        True,
        {f"lora.apply_to_{c}": False for c in ("text_encoder", "detr_encoder", "detr_decoder")},
    ),
}
SHOWN = ("run", "val/retention", "retention", "retention_iou", "circle miou adapter")


def circles_dataset(work: Path, num_train: int, num_val: int) -> tuple[Path, Path]:
    """Plain shapes with circles annotated only, and the vocabulary file."""
    full = work / "shapes-plain"
    if not (full / "valid" / "_annotations.coco.json").is_file():
        generate_shapes_dataset(full, num_train=num_train, num_val=num_val, seed=5)
    for split in ("train", "valid"):
        keep_categories(full / split, ["circle"], work / "circles" / split)
    vocabulary = work / "vocabulary.txt"
    vocabulary.write_text("\n".join(VOCABULARY) + "\n")
    return work / "circles", vocabulary


def retention_config(work: Path, name: str, steps: int, verify: bool, **extra: Any) -> Config:
    circles, vocabulary = work / "circles", work / "vocabulary.txt"
    return load_config(
        "quickstart",
        {
            "data.synthetic": None,
            "data.train": str(circles / "train"),
            "data.valid": str(circles / "valid"),
            "data.negative_prompts": str(vocabulary),
            "data.verify_negatives": verify,
            "data.negative_verify_threshold": TINY_THRESHOLD,
            "training.max_steps": steps,
            "training.eval_steps": steps,
            "training.save_steps": steps,
            "training.warmup_steps": min(30, steps // 10),
            "output.output_dir": str(work / name),
            "output.tensorboard": False,
            **extra,
        },
    )


def run_retention(args: argparse.Namespace) -> None:
    work = Path(args.work)
    circles_dataset(work, args.num_train, args.num_val)
    results = work / "retention.json"
    rows = json.loads(results.read_text()) if results.is_file() else []
    for name in args.variants:
        verify, extra = VARIANTS[name]
        config = retention_config(work, _folder(name), args.steps, verify, **extra)
        final = Path(config.output.output_dir) / "final"
        seconds = None
        if args.rescore:  # the adapter trained before, measured with the current code
            validation = validate_adapter(
                retention_config(work, f"{_folder(name)}/rescore", args.steps, verify, **extra),
                final,
            )
        else:
            shutil.rmtree(config.output.output_dir, ignore_errors=True)
            started = time.perf_counter()
            validation = SAM3TrainerNative(config).train()["final_metrics"]
            seconds = round(time.perf_counter() - started, 1)
        old = next((row for row in rows if row["run"] == name), {})
        rows = [row for row in rows if row["run"] != name]
        rows.append(
            {
                "run": name,
                "train s": seconds if seconds is not None else old.get("train s"),
                "val/retention": validation.get("val/retention"),
                "val/retention_iou": validation.get("val/retention_iou"),
                **evaluate_adapter(work, name, args.steps, final),
            }
        )
        results.write_text(json.dumps(rows, indent=2))
    print_rows(
        [{k: v for k, v in row.items() if k in SHOWN} for row in rows],
        f"retention after {args.steps} steps (circles annotated only; all: {results})",
    )


def _folder(name: str) -> str:
    return name.replace(", ", "-").replace(" ", "-")


def validate_adapter(config: Config, final: Path) -> dict[str, float]:
    """Training validation (``val/*``) of a saved adapter, as the trainer runs it."""
    from sam3_lora.engine.trainer import Trainer
    from sam3_lora.training import build_recipe

    recipe = build_recipe(config)
    recipe.task.load_weights(final)
    trainer = Trainer(config, recipe.task, recipe.train_dataset, recipe.valid_dataset)
    trainer.setup()
    return trainer.evaluate()


def evaluate_adapter(work: Path, name: str, steps: int, final: Path) -> dict[str, Any]:
    """``evaluate --compare-base`` of an adapter (negatives verified): retention and the
    circle metrics."""
    from sam3_lora.evaluation.runner import evaluate_from_config

    _, extra = VARIANTS[name]
    evaluated = evaluate_from_config(
        retention_config(work, _folder(name), steps, True, **extra),
        final,
        compare_base=True,
        output_dir=final.parent / "eval",
        gallery_size=4,
        console=Console(quiet=True),
    )
    adapter = evaluated["models"]["adapter"]["overall"]
    base = evaluated["models"]["base"]["overall"]
    retention = evaluated["retention"]
    return {
        "retention": retention["retention"],
        "retention_iou": retention["retention_iou"],
        "base detections": retention["retention_detections"],
        **{f"{c} kept": v["retention"] for c, v in sorted(retention["per_concept"].items())},
        "circle miou base": base["miou"],
        "circle miou adapter": adapter["miou"],
        "cgF1 base": base["cgF1"],
        "cgF1 adapter": adapter["cgF1"],
        "negative_fire_rate": adapter["negative_fire_rate"],
    }


def quickstart_config(work: Path, name: str, **overrides: Any) -> Config:
    return load_config(
        "quickstart",
        {
            "data.synthetic.output_dir": str(work / "shapes-shifted"),
            "output.output_dir": str(work / name),
            "output.tensorboard": False,
            **overrides,
        },
    )


def run_cost(args: argparse.Namespace) -> None:
    from sam3_lora.models import load_model
    from sam3_lora.tasks.concept.recipe import (
        build_concept_datasets,
        model_resolution,
        verify_dataset_negatives,
    )

    work = Path(args.work)
    config = quickstart_config(work, "quickstart")
    loaded = load_model(config.model.name_or_path)
    resolution = model_resolution(loaded, config)
    datasets = [d for d in build_concept_datasets(config, resolution) if d is not None]

    def clear_caches() -> None:
        for dataset in datasets:
            shutil.rmtree(dataset.coco.annotation_file.parent / ".sam3-lora", ignore_errors=True)

    clear_caches()
    timings = {}
    for label in ("fresh", "cached"):
        started = time.perf_counter()
        checks = verify_dataset_negatives(config, loaded, resolution, datasets)
        timings[label] = time.perf_counter() - started
    images = sum(len(c.scores) for c in checks)
    pool = config.data.negative_verify_pool
    rows = [
        {"what": f"verification pass, {label} ({images} images x {pool})", "seconds": seconds}
        for label, seconds in timings.items()
    ]
    for check in checks:
        console.print(check.summary(), soft_wrap=True)

    steps = 800 if args.full else args.steps
    runs = {}
    for verify in (True, False):  # the quick start (its first `steps` steps), cache cleared
        clear_caches()
        name = f"quickstart-{steps}-{'verified' if verify else 'unverified'}"
        overrides = {"data.verify_negatives": verify, "training.max_steps": steps}
        if steps < 800:  # validate at the start and the end only, as the quick start does
            overrides.update({"training.eval_steps": steps, "training.save_steps": steps})
        run_config = quickstart_config(work, name, **overrides)
        shutil.rmtree(run_config.output.output_dir, ignore_errors=True)
        started = time.perf_counter()
        summary = SAM3TrainerNative(run_config).train()
        runs[verify] = (time.perf_counter() - started, summary)
    for verify, (wall, summary) in runs.items():
        label = "verified" if verify else "unverified"
        rows.append({"what": f"quick start, {steps} steps, {label}: wall", "seconds": wall})
        rows.append({"what": "  of which the training loop", "seconds": summary["wall_time_s"]})
    wall_off, summary_off = runs[False]
    per_step = summary_off["wall_time_s"] / steps
    estimate = wall_off + (800 - steps) * per_step
    rows.append(
        {"what": "quick start (800 steps), unverified: wall (estimated)", "seconds": estimate}
    )
    rows.append(
        {
            "what": "fresh pass / quick start wall (800 steps)",
            "seconds": timings["fresh"] / estimate,
        }
    )
    rows.append(
        {"what": f"fresh pass / this {steps}-step run", "seconds": timings["fresh"] / wall_off}
    )
    print_rows(rows, "what negative verification costs on the quick start")

    table = []
    for stage, key in (("first", "base_metrics"), ("last", "final_metrics")):
        on, off = runs[True][1][key], runs[False][1][key]
        for metric in sorted(set(on) | set(off)):
            if not metric.startswith("val/loss_"):
                table.append(
                    {"validation": stage, "metric": metric, "verified": on.get(metric),
                     "unverified": off.get(metric)}
                )  # fmt: skip
    print_rows(table, f"quick start validation, verification on and off ({steps} steps)")
    (work / "cost.json").write_text(json.dumps({"cost": rows, "validation": table}, indent=2))


def print_rows(rows: list[dict[str, Any]], title: str) -> None:
    table = Table(title=title)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    console.print(table)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "" if value is None else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("retention", "cost"))
    parser.add_argument("--work", default="outputs/bench-prompt-fidelity")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--num_train", type=int, default=400)
    parser.add_argument("--num_val", type=int, default=50)
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=["verified", "unverified"],
        metavar="NAME",
        help=f"retention runs (results are merged into retention.json): {', '.join(VARIANTS)}",
    )
    parser.add_argument(
        "--rescore",
        action="store_true",
        help="retention: measure the adapters trained before again (no training)",
    )
    parser.add_argument(
        "--full", action="store_true", help="cost: the whole quick start (800 steps), not --steps"
    )
    args = parser.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    run_retention(args) if args.what == "retention" else run_cost(args)


if __name__ == "__main__":
    main()
