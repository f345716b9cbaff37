"""Decoder-only training epochs with and without the vision-feature cache (one process).

The tiny shipped SAM3 with LoRA on the DETR decoder and mask decoder only (no adapter in the
vision encoder), ``data.augment: false``, on a generated shapes dataset: real dataset loading,
collate, forward, loss, backward and AdamW, batch 2. The cached run's first epoch fills the cache;
the epochs after it are timed against the uncached ones, interleaved epoch by epoch.

    python benchmarks/feature_cache.py --images 16 --epochs 3
    python benchmarks/feature_cache.py --model sam3-size --resolution 336 --images 4 --epochs 3
    python benchmarks/feature_cache.py --storage disk   # training.feature_cache_storage: disk

``--model sam3-size`` is the released architecture with random weights (the same cost), at
``--resolution`` (a multiple of 336), built by ``step_models.load_base`` as in ``train_step.py``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from step_models import load_base

from sam3_lora.config import load_config
from sam3_lora.data.synthetic import generate_shapes_dataset
from sam3_lora.tasks.concept.recipe import build_concept_recipe
from sam3_lora.tasks.spec import TaskRecipe


def build(
    data: Path, cache: bool, model: str, resolution: int | None, storage: str = "memory"
) -> TaskRecipe:
    loaded, _ = load_base(model, resolution, "none")
    overrides = {
        "model.name_or_path": model,
        "data.train": str(data / "train"),
        "data.valid": None,
        "data.augment": False,
        "lora.apply_to_vision_encoder": False,
        "lora.apply_to_detr_decoder": True,
        "lora.target_modules": ["q_proj", "k_proj", "v_proj"],
        "training.cache_vision_features": cache,
        "training.feature_cache_storage": storage,
        "output.output_dir": str(data.parent / "run"),
    }
    torch.manual_seed(0)
    return build_concept_recipe(load_config("balanced", overrides), loaded)


def epoch(recipe: TaskRecipe, optimizer: torch.optim.Optimizer, batch_size: int) -> float:
    """Seconds of one training epoch (loading included)."""
    task, dataset = recipe.task, recipe.train_dataset
    task.model.train()
    start = time.perf_counter()
    for first in range(0, len(dataset), batch_size):
        batch = task.collate(
            [dataset[i] for i in range(first, min(first + batch_size, len(dataset)))]
        )
        task.loss(task.model(batch), batch)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=None, help="sam3-size: input side")
    parser.add_argument(
        "--storage", choices=("memory", "disk"), default="memory", help="of the cached run"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        data = generate_shapes_dataset(
            Path(root) / "shapes",
            num_train=args.images,
            num_val=1,
            seed=0,
            image_size=256,
            progress=False,
        )
        runs = {
            name: build(data, name == "cached", args.model, args.resolution, args.storage)
            for name in ("plain", "cached")
        }
        optimizers = {
            name: torch.optim.AdamW([p for p in r.task.model.parameters() if p.requires_grad])
            for name, r in runs.items()
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.epochs):
            for name, recipe in runs.items():
                times[name].append(epoch(recipe, optimizers[name], args.batch_size))
    cache = runs["cached"].task.model.feature_cache
    size = f" at {args.resolution} px" if args.resolution else ""
    print(
        f"{args.model}{size}, {args.images} images, batch {args.batch_size}, decoder-only LoRA, "
        f"cache in {args.storage}"
    )
    print(f"{'epoch':<8}{'plain s':>10}{'cached s':>10}{'speed-up':>10}")
    for k, (plain, cached) in enumerate(zip(times["plain"], times["cached"], strict=True)):
        print(f"{k + 1:<8}{plain:>10.2f}{cached:>10.2f}{plain / cached:>9.2f}x")
    later = statistics.median(times["plain"][1:]) / statistics.median(times["cached"][1:])
    print(
        f"epochs after the first: {later:.2f}x; cache {cache.nbytes() / 2**20:.1f} MiB, "
        f"{cache.hits} hits, {cache.misses} misses"
    )


if __name__ == "__main__":
    main()
