"""Training-step speed: vision features shared by all prompts of an image vs the naive way.

Naive: every (image, prompt) pair runs the whole model, image encoder included (what a plain
``Sam3Model(pixel_values=..., input_ids=...)`` call with repeated images does). Shared: the
concept task encodes each image once and each distinct prompt once, then runs the DETR and mask
heads per pair. Both run forward + loss + backward through a LoRA adapter in the vision encoder.

    python benchmarks/bench_prompt_sharing.py                      # tiny SAM3 on CPU
    python benchmarks/bench_prompt_sharing.py --model sam3-size    # released size, random (GPU)
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table
from transformers import Sam3Config, Sam3Model

from sam3_lora.config import LoraSettings
from sam3_lora.lora import apply_lora_to_model
from sam3_lora.models import load_sam3
from sam3_lora.tasks.concept.loss import Sam3ConceptLoss
from sam3_lora.tasks.concept.module import ConceptModel
from sam3_lora.tasks.concept.samples import ConceptBatch
from sam3_lora.tasks.concept.task import ConceptTask
from sam3_lora.tasks.concept.tiny import build_tiny_processor


def make_batch(images: int, prompts: int, resolution: int, device: str) -> ConceptBatch:
    generator = torch.Generator().manual_seed(0)
    names = ["circle", "rectangle", "triangle", "star", "hexagon", "square", "ellipse", "shape"]
    boxes, masks = [], []
    for index in range(images * prompts):
        count = index % 3
        centre = torch.rand(count, 2, generator=generator) * 0.6 + 0.2
        boxes.append(torch.cat([centre, torch.full((count, 2), 0.2)], dim=1))
        mask = torch.zeros(count, resolution, resolution, dtype=torch.bool)
        for k in range(count):
            x, y = (centre[k] * resolution).long().tolist()
            half = int(0.1 * resolution)
            mask[k, y - half : y + half, x - half : x + half] = True
        masks.append(mask)
    return ConceptBatch(
        pixel_values=torch.randn(images, 3, resolution, resolution, generator=generator),
        prompt_image_index=torch.arange(images).repeat_interleave(prompts),
        prompts=[names[i % len(names)] for _ in range(images) for i in range(prompts)],
        prompt_category_ids=[0] * (images * prompts),
        target_boxes=boxes,
        target_masks=masks,
        image_indices=list(range(images)),
    ).to(device)


def naive_forward(task: ConceptTask, batch: ConceptBatch) -> object:
    """Re-encode the image for every prompt: the pixels are repeated along the batch."""
    repeated = ConceptBatch(
        pixel_values=batch.pixel_values[batch.prompt_image_index],
        prompt_image_index=torch.arange(batch.num_prompts, device=batch.pixel_values.device),
        prompts=batch.prompts,
        prompt_category_ids=batch.prompt_category_ids,
        target_boxes=batch.target_boxes,
        target_masks=batch.target_masks,
        image_indices=list(range(batch.num_prompts)),
    )
    return task.model(repeated)


def time_step(
    task: ConceptTask, batch: ConceptBatch, naive: bool, iters: int
) -> tuple[float, float]:
    device = batch.pixel_values.device
    timings = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(iters + 1):  # first iteration is warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            outputs = naive_forward(task, batch) if naive else task.model(batch)
            loss = task.loss(outputs, batch)["loss"]
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - start)
        task.model.zero_grad(set_to_none=True)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return sorted(timings[1:])[len(timings[1:]) // 2], peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny-random", "sam3-size"), default="tiny-random")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--prompts", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    if args.model == "tiny-random":
        loaded = load_sam3("tiny-random")
        model, tokenizer = loaded.model, loaded.processor.tokenizer
    else:
        model = Sam3Model(Sam3Config())
        tokenizer = build_tiny_processor().tokenizer  # any CLIP tokenizer; weights are random
    resolution = int(model.config.vision_config.image_size)
    model = apply_lora_to_model(model, LoraSettings(rank=16)).to(args.device)
    model.train()
    task = ConceptTask(ConceptModel(model, tokenizer), Sam3ConceptLoss())

    table = Table(title=f"{args.model} on {args.device}: one training step, {args.images} images")
    for header in (
        "prompts / image",
        "naive s/step",
        "shared s/step",
        "speed-up",
        "naive GiB",
        "shared GiB",
    ):
        table.add_column(header, justify="right")
    for prompts in args.prompts:
        batch = make_batch(args.images, prompts, resolution, args.device)
        naive, naive_peak = time_step(task, batch, naive=True, iters=args.iters)
        shared, shared_peak = time_step(task, batch, naive=False, iters=args.iters)
        table.add_row(
            str(prompts),
            f"{naive:.3f}",
            f"{shared:.3f}",
            f"{naive / shared:.2f}x",
            f"{naive_peak:.2f}",
            f"{shared_peak:.2f}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
