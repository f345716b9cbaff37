"""Inference latency of SAM3: base vs adapter (unmerged PEFT) vs merged, batching, prompts.

Every call is the predictor ``sam3-lora predict`` runs (``ConceptPredictor.predict_prompts``:
resize + normalise, the task's one forward, thresholds and masks at the image size), on 640 x 480
random images. Three networks of one base, interleaved call by call: ``base``; ``adapter``: the
preset's LoRA (B made non-zero, as after training) left unmerged, so every adapted layer runs
its LoRA branch; ``merged``: a copy of the adapter folded in with ``merge_and_unload`` (what
``sam3-lora merge`` saves: a plain ``Sam3Model``). Settings per image: one image and one prompt;
``--batch`` images in one call; ``--prompts`` prompts of one image in one call (one vision
pass) against the same prompts in one call each (one vision pass per prompt).

    python benchmarks/inference_latency.py --model tiny --repeats 7        # CPU
    python benchmarks/inference_latency.py --model sam3-size --json out.json  # GPU, 1008 px

Medians over ``--repeats`` after one warm-up call per setting and network.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sam3_lora.config import load_config
from sam3_lora.lora import apply_lora_to_model
from sam3_lora.tasks.concept.module import ConceptModel
from sam3_lora.tasks.concept.predictor import ConceptPredictor, ConceptPrompt

NETWORKS = ("base", "adapter", "merged")
PROMPT_TEXTS = ("circle", "rectangle", "triangle", "star", "hexagon", "square", "ellipse", "shape")


def load_networks(
    model: str, preset: str, resolution: int | None, device: str
) -> tuple[dict, Any, int]:
    """``{base, adapter, merged}`` networks of ``model`` in eval mode, the processor, the
    resolution."""
    sys.path.insert(0, str(Path(__file__).parent))
    from step_models import load_base

    loaded, size = load_base(model, resolution, "none", device)
    base = loaded.model.eval()
    config = load_config(preset, {"model.name_or_path": "tiny"})
    adapter = apply_lora_to_model(copy.deepcopy(base), config.lora).eval()
    generator = torch.Generator().manual_seed(0)
    for name, parameter in adapter.named_parameters():
        if "lora_B" in name:  # trained adapters have B != 0; zero B would skip nothing anyway
            update = torch.randn(parameter.shape, generator=generator) * 1e-3
            parameter.data = update.to(parameter.device)
    merged = copy.deepcopy(adapter).merge_and_unload().eval()
    return {"base": base, "adapter": adapter, "merged": merged}, loaded.processor, size


def random_images(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)) for _ in range(count)
    ]


def settings(
    images: list[Image.Image], batch: int, prompts: int
) -> dict[str, tuple[Callable[[ConceptPredictor], Any], int]]:
    """Setting name -> ``(predictor) -> None`` and the images it covers (for per-image ms)."""
    one = [ConceptPrompt(text=PROMPT_TEXTS[0])]
    many = [ConceptPrompt(text=PROMPT_TEXTS[i % len(PROMPT_TEXTS)]) for i in range(prompts)]
    return {
        "1 image, 1 prompt": (lambda p: p.predict_prompts(images[:1], [one]), 1),
        f"{batch} images / call, 1 prompt": (
            lambda p: p.predict_prompts(images[:batch], [one] * batch),
            batch,
        ),
        f"1 image, {prompts} prompts, 1 call": (lambda p: p.predict_prompts(images[:1], [many]), 1),
        f"1 image, {prompts} prompts, {prompts} calls": (
            lambda p: [p.predict_prompts(images[:1], [[prompt]]) for prompt in many],
            1,
        ),
    }


def timed(call: Callable[[], Any], device: torch.device) -> float:
    """Milliseconds of one call (CUDA synchronised)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    call()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def measure(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Median ms per image of every (setting, network), interleaved network by network."""
    device = torch.device(args.device)
    networks, processor, args.resolution = load_networks(
        args.model, args.preset, args.resolution, args.device
    )
    predictors = {
        name: ConceptPredictor(
            ConceptModel(network.to(device), processor.tokenizer), processor.image_processor, device
        )
        for name, network in networks.items()
    }
    images = random_images(args.batch)
    table: dict[str, dict[str, float]] = {}
    for setting, (call, covered) in settings(images, args.batch, args.prompts).items():
        samples: dict[str, list[float]] = {name: [] for name in predictors}
        for repeat in range(args.repeats + 1):
            for name, predictor in predictors.items():
                ms = timed(lambda p=predictor, c=call: c(p), device)
                if repeat:  # repeat 0 warms up
                    samples[name].append(ms / covered)
        table[setting] = {name: statistics.median(v) for name, v in samples.items()}
    return table


def print_table(table: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    print(
        f"{args.model} / {args.preset} LoRA, {args.resolution} px, {args.device}, ms per image "
        f"(median of {args.repeats})"
    )
    print(f"{'setting':<34}" + "".join(f"{n:>9}" for n in NETWORKS) + "  adapter/merged  /base")
    for setting, row in table.items():
        ratio = row["adapter"] / row["merged"]
        print(
            f"{setting:<34}"
            + "".join(f"{row[n]:>9.1f}" for n in NETWORKS)
            + f"{ratio:>15.2f}x{row['adapter'] / row['base']:>6.2f}x"
        )
    settings_list = list(table)
    one_pass, per_prompt = table[settings_list[2]], table[settings_list[3]]
    batched, single = table[settings_list[1]], table[settings_list[0]]
    print(
        f"{args.prompts} prompts, one vision pass vs one per prompt: "
        + ", ".join(f"{n} {per_prompt[n] / one_pass[n]:.2f}x" for n in NETWORKS)
    )
    print(
        f"batch {args.batch} vs batch 1 (per image): "
        + ", ".join(f"{n} {single[n] / batched[n]:.2f}x" for n in NETWORKS)
    )


def result_rows(table: dict[str, dict[str, float]], args: argparse.Namespace) -> list[dict]:
    """Rows with the fields of ``benchmarks/README.md`` (one per setting and network)."""
    device = torch.device(args.device)
    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    peak = (
        torch.cuda.max_memory_allocated()
        if gpu_name
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    batches = [1, args.batch, 1, 1]
    prompts = [1, 1, args.prompts, args.prompts]
    rows = []
    for (setting, row), batch, prompt in zip(table.items(), batches, prompts, strict=True):
        for name in NETWORKS:
            rows.append(
                {
                    "benchmark": "inference_latency",
                    "model": args.model,
                    "preset": args.preset,
                    "variant": name,
                    "setting": setting,
                    "resolution": args.resolution,
                    "batch_size": batch,
                    "prompts_per_image": prompt,
                    "precision": "bf16" if gpu_name and torch.cuda.is_bf16_supported() else "fp32",
                    "gradient_checkpointing": False,
                    "device": device.type,
                    "gpu_name": gpu_name,
                    "latency_ms_per_image": row[name],
                    "images_per_s": 1e3 / row[name],
                    "peak_memory_gb": peak / 1e9,
                    "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny", "sam3-size"), default="tiny")
    parser.add_argument("--preset", default="balanced", help="its LoRA settings")
    parser.add_argument("--resolution", type=int, default=None, help="sam3-size: default 1008")
    parser.add_argument("--batch", type=int, default=4, help="images per batched call")
    parser.add_argument("--prompts", type=int, default=8, help="prompts of one image")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="append the rows to this file")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--parse_only", action="store_true", help="check the arguments, exit")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.prompts < 1 or args.repeats < 1:
        parser.error("--batch, --prompts and --repeats must be >= 1")
    load_config(args.preset)
    if args.parse_only:
        print(f"ok: {vars(args)}")
        return {}
    table = measure(args)
    print_table(table, args)
    if args.json:
        rows = json.loads(args.json.read_text()) if args.json.is_file() else []
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows + result_rows(table, args), indent=1) + "\n")
    return table


if __name__ == "__main__":
    main()
