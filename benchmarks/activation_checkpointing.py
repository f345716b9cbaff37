"""Activation checkpointing (``training.gradient_checkpointing``): memory and time of a step.

One training step (forward + loss + backward) of the concept task with and without
checkpointing of the ViT blocks and DETR layers, in LoRA and in full mode. "saved MiB" is what
autograd keeps for the backward pass outside the checkpointed layers (the activations, measured
with ``saved_tensors_hooks``; the same on every device); on a GPU "peak GiB" is
``torch.cuda.max_memory_allocated`` (weights, gradients and activations).

    python benchmarks/activation_checkpointing.py                     # tiny SAM3 on CPU
    python benchmarks/activation_checkpointing.py --model sam3-size   # released size (GPU)
    python benchmarks/activation_checkpointing.py --meta              # released ViT, no compute

``--meta`` runs the released SAM3's vision encoder at 1008 px on the meta device (shapes only,
any machine, a second): the activations kept for backward, fp32, with and without checkpointing.
On meta, SDPA saves its attention matrices as the math kernel does (flash attention on a GPU does
not): an upper bound. The DETR and text parts cannot run there (``transformers`` reads masks).
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_prompt_sharing import make_batch
from rich.console import Console
from rich.table import Table
from transformers import Sam3Config, Sam3Model

from sam3_lora.config import load_config
from sam3_lora.models import LoadedModel, load_sam3
from sam3_lora.tasks.concept.checkpointing import enable_activation_checkpointing
from sam3_lora.tasks.concept.recipe import build_concept_task
from sam3_lora.tasks.concept.tiny import build_tiny_processor, sam3_size_model


def load(model: str) -> LoadedModel:
    if model == "tiny-random":
        return load_sam3("tiny-random")
    torch.manual_seed(0)
    return LoadedModel(Sam3Model(Sam3Config()), build_tiny_processor(), "sam3-size (random)")


class SavedBytes:
    """Counts the bytes autograd saves for backward inside ``with`` (a ``saved_tensors_hooks``)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor)

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self.bytes += tensor.numel() * tensor.element_size()
        return tensor

    def __enter__(self) -> SavedBytes:
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.hooks.__exit__(*exc)


def released_vision_gib(checkpointing: bool, images: int) -> float:
    """GiB the released ViT + neck keep for backward on ``images`` 1008 px images (meta)."""
    model = sam3_size_model()
    if checkpointing:
        enable_activation_checkpointing(model)
    model.train()
    size = int(model.config.vision_config.image_size)
    with SavedBytes() as saved:
        model.get_vision_features(pixel_values=torch.empty(images, 3, size, size, device="meta"))
    return saved.bytes / 2**30


def measure_step(task: object, batch: object, iters: int) -> tuple[float, float, float]:
    """(median seconds per step, MiB saved for backward, peak GiB on a GPU or nan)."""
    device = batch.pixel_values.device
    cuda = device.type == "cuda"
    timings, saved = [], SavedBytes()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(iters + 1):  # the first is warm-up
        saved.bytes = 0
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with saved, torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = task.loss(task.model(batch), batch)["loss"]
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - start)
        task.model.zero_grad(set_to_none=True)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return sorted(timings[1:])[len(timings[1:]) // 2], saved.bytes / 2**20, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny-random", "sam3-size"), default="tiny-random")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--prompts", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--modes", nargs="+", default=["lora", "full"])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--meta", action="store_true", help="the released ViT on the meta device")
    args = parser.parse_args()

    if args.meta:
        table = Table(title=f"released SAM3 ViT + neck: {args.images} x 1008 px, fp32")
        for header in ("checkpointing", "saved for backward GiB"):
            table.add_column(header, justify="right")
        for checkpointing in (False, True):
            gib = released_vision_gib(checkpointing, args.images)
            table.add_row("on" if checkpointing else "off", f"{gib:.2f}")
        Console(width=80).print(table)
        return

    table = Table(title=f"{args.model} on {args.device}: one step, {args.images} images")
    for header in ("mode", "prompts", "ckpt", "s/step", "saved MiB", "peak GiB"):
        table.add_column(header, justify="right")
    for mode in args.modes:
        for checkpointing in (False, True):
            overrides = {
                "model.name_or_path": args.model,
                "finetune.mode": mode,
                "training.gradient_checkpointing": checkpointing,
                "lora.dropout": 0.0,
            }
            loaded = load(args.model)
            task = build_concept_task(load_config(None, overrides), loaded)
            task.model.to(args.device).train()
            resolution = int(loaded.model.config.vision_config.image_size)
            for prompts in args.prompts:
                batch = make_batch(args.images, prompts, resolution, args.device)
                seconds, saved, peak = measure_step(task, batch, args.iters)
                table.add_row(
                    mode,
                    str(prompts),
                    "on" if checkpointing else "off",
                    f"{seconds:.3f}",
                    f"{saved:.1f}",
                    f"{peak:.2f}",
                )
            del task, loaded
    Console(width=80).print(table)


if __name__ == "__main__":
    main()
