"""Training-step benchmark: speed, time split and peak memory of the real concept task step.

Each step is what ``sam3-lora train`` runs: batch -> ``task.model`` (vision features once per
image, shared by its prompts) -> ``task.loss`` -> backward -> AdamW. The step is split into
data (building the batch and moving it to the device), vision forward (the ViT + neck, timed
with forward hooks on ``vision_encoder``), rest of forward (text, DETR, masks), loss, backward
and optimizer (step + zero_grad); CUDA events on a GPU, ``perf_counter`` on CPU.

``--compare`` interleaves, in one process, the naive variant (fp32, the image re-encoded for
every prompt, mask losses at the full target resolution) with the optimised one (the
``--precision`` autocast, shared vision features, mask losses on the predicted-mask grid, fused
AdamW on CUDA) and prints the ratios. Medians over ``--steps`` steps after one warm-up step each.

    python benchmarks/train_step.py --model tiny --compare                  # CPU, seconds
    python benchmarks/train_step.py --model sam3-size --prompts_per_image 4 # GPU
    python benchmarks/train_step.py --model sam3-size --resolution 336      # CPU, reduced size

Peak memory: ``torch.cuda.max_memory_allocated`` per variant on a GPU; on CPU the process's peak
RSS (one number for the process: with ``--compare`` it is the larger variant's).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from bench_prompt_sharing import make_batch, naive_forward
from transformers import Sam3Config, Sam3Model

from sam3_lora.config import load_config
from sam3_lora.models import LoadedModel, load_sam3
from sam3_lora.tasks.concept.recipe import build_concept_task
from sam3_lora.tasks.concept.task import ConceptTask
from sam3_lora.tasks.concept.tiny import build_tiny_processor

PARTS = ("data", "vision", "forward", "loss", "backward", "optimizer")

#: Dense bf16 peak TFLOP/s of common GPUs (vendor data sheets, no sparsity).
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
}


@dataclass
class Variant:
    """One way of running the step."""

    name: str
    precision: str  # "bf16" or "fp32"
    share_vision: bool
    mask_loss_resolution: int | None
    fused_adamw: bool


@dataclass
class Result:
    """One result row (the schema of ``benchmarks/results/*.json``)."""

    model: str
    preset: str
    variant: str
    resolution: int
    batch_size: int
    prompts_per_image: int
    precision: str
    gradient_checkpointing: bool
    device: str
    gpu_name: str | None
    images_per_s: float
    step_ms: float
    peak_memory_gb: float
    trainable_parameters: int
    flops_per_step: float | None
    flop_bound_images_per_s: float | None
    date: str
    parts_ms: dict[str, float] = field(default_factory=dict)


class Timer:
    """Accumulates the time of named parts of a step (CUDA events or ``perf_counter``)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, Any, Any]] = []
        self._open: dict[str, Any] = {}

    def _now(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self, name: str) -> None:
        self._open[name] = self._now()

    def stop(self, name: str) -> None:
        self.marks.append((name, self._open.pop(name), self._now()))

    def totals_ms(self) -> dict[str, float]:
        """Milliseconds per part since the last call (synchronises CUDA)."""
        if self.cuda:
            torch.cuda.synchronize()
        totals: dict[str, float] = {}
        for name, begin, end in self.marks:
            ms = begin.elapsed_time(end) if self.cuda else (end - begin) * 1e3
            totals[name] = totals.get(name, 0.0) + ms
        self.marks.clear()
        return totals


def random_sam3(resolution: int) -> Sam3Model:
    """The released SAM3 architecture with random weights, at ``resolution`` (multiple of 336:
    the ViT's 14 px patches in 24-token windows)."""
    if resolution % 336:
        raise SystemExit(f"--resolution {resolution}: sam3-size needs a multiple of 336")
    tokens = resolution // 14
    config = Sam3Config()
    config.vision_config.backbone_config.image_size = resolution
    config.vision_config.backbone_feature_sizes = [[tokens * 4] * 2, [tokens * 2] * 2, [tokens] * 2]
    torch.manual_seed(0)
    return Sam3Model(config)


def load(model: str, resolution: int | None) -> tuple[LoadedModel, int]:
    """The base model and its input resolution."""
    if model == "tiny":
        loaded = load_sam3("tiny")
        size = int(loaded.model.config.vision_config.image_size)
        if resolution not in (None, size):
            raise SystemExit(f"--resolution: the tiny SAM3 runs at {size} px only")
        return loaded, size
    if model == "sam3-size":
        size = resolution or 1008
        return LoadedModel(random_sam3(size), build_tiny_processor(), "sam3-size (random)"), size
    raise SystemExit(
        f"--model {model}: the SAM2.1 promptable task is not on this branch yet; skipped"
    )


def build_task(args: argparse.Namespace) -> tuple[ConceptTask, int, int]:
    """The concept task of ``--preset`` on the model; (task, resolution, predicted-mask side)."""
    loaded, resolution = load(args.model, args.resolution)
    config = load_config(
        args.preset,
        {
            "model.name_or_path": args.model,
            "training.gradient_checkpointing": args.gradient_checkpointing,
        },
    )
    task = build_concept_task(config, loaded)
    task.model.to(args.device).train()
    mask_side = int(task.model.sam3.config.vision_config.backbone_feature_sizes[0][0])
    return task, resolution, mask_side


def run_step(
    task: ConceptTask,
    optimizer: torch.optim.Optimizer,
    variant: Variant,
    new_batch: Callable[[], Any],
    timer: Timer,
) -> None:
    """One training step of ``variant``, its parts recorded in ``timer``."""
    device = next(task.model.parameters()).device
    timer.start("data")
    batch = new_batch().to(device)
    timer.stop("data")
    task.criterion.weights.mask_loss_resolution = variant.mask_loss_resolution
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=variant.precision == "bf16"):
        timer.start("forward")
        outputs = naive_forward(task, batch) if not variant.share_vision else task.model(batch)
        timer.stop("forward")
        timer.start("loss")
        loss = task.loss(outputs, batch)["loss"]
        timer.stop("loss")
    timer.start("backward")
    loss.backward()
    timer.stop("backward")
    timer.start("optimizer")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    timer.stop("optimizer")


def count_flops(task: ConceptTask, variant: Variant, new_batch: Callable[[], Any]) -> float:
    """FLOPs of one forward + backward (``torch.utils.flop_counter``: matmuls, convolutions and
    attention, counted from shapes; element-wise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(task.model.parameters()).device
    batch = new_batch().to(device)
    task.criterion.weights.mask_loss_resolution = variant.mask_loss_resolution
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=variant.precision == "bf16"):
            outputs = naive_forward(task, batch) if not variant.share_vision else task.model(batch)
            loss = task.loss(outputs, batch)["loss"]
        loss.backward()
    task.model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def peak_tflops(gpu_name: str | None) -> float | None:
    """The GPU's dense bf16 peak (TFLOP/s) when known."""
    if gpu_name is None:
        return None
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu_name), None)


def measure(args: argparse.Namespace, variants: list[Variant]) -> list[Result]:
    """Interleave ``args.steps`` steps of each variant (after one warm-up each)."""
    device = torch.device(args.device)
    task, resolution, mask_side = build_task(args)
    for variant in variants:
        if variant.mask_loss_resolution == -1:
            variant.mask_loss_resolution = mask_side
    params = [p for p in task.model.parameters() if p.requires_grad]
    optimizers = {
        v.name: torch.optim.AdamW(params, lr=1e-4, fused=v.fused_adamw or None) for v in variants
    }
    timer = Timer(device)
    vision = task.model.sam3.vision_encoder
    vision.register_forward_pre_hook(lambda *_: timer.start("vision"))
    vision.register_forward_hook(lambda *_: timer.stop("vision"))

    def new_batch() -> Any:
        return make_batch(args.batch_size, args.prompts_per_image, resolution, "cpu")

    parts: dict[str, list[dict[str, float]]] = {v.name: [] for v in variants}
    peaks = dict.fromkeys(parts, 0.0)
    for step in range(args.steps + 1):
        for variant in variants:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            run_step(task, optimizers[variant.name], variant, new_batch, timer)
            totals = timer.totals_ms()
            if device.type == "cuda":
                peaks[variant.name] = max(peaks[variant.name], torch.cuda.max_memory_allocated())
            if step:  # step 0 is the warm-up
                parts[variant.name].append(totals)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    peak = peak_tflops(gpu_name)
    trainable = sum(p.numel() for p in params)
    results = []
    for variant in variants:
        median = {
            name: statistics.median(s.get(name, 0.0) for s in parts[variant.name]) for name in PARTS
        }
        median["forward"] -= median["vision"]  # "rest of forward"
        step_ms = statistics.median(
            sum(s.values()) - s.get("vision", 0.0) for s in parts[variant.name]
        )
        flops = count_flops(task, variant, new_batch) if args.flops else None
        bound = peak * 1e12 / flops * args.batch_size if flops and peak else None
        results.append(
            Result(
                model=args.model,
                preset=args.preset,
                variant=variant.name,
                resolution=resolution,
                batch_size=args.batch_size,
                prompts_per_image=args.prompts_per_image,
                precision=variant.precision,
                gradient_checkpointing=args.gradient_checkpointing,
                device=device.type,
                gpu_name=gpu_name,
                images_per_s=args.batch_size / step_ms * 1e3,
                step_ms=step_ms,
                peak_memory_gb=(peaks[variant.name] if gpu_name else rss) / 1e9,
                trainable_parameters=trainable,
                flops_per_step=flops,
                flop_bound_images_per_s=bound,
                date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                parts_ms=median,
            )
        )
    return results


def print_table(results: list[Result]) -> None:
    """The results as a table under 80 columns, ratios to the first row when there are two."""
    first = results[0]
    print(
        f"{first.model} / {first.preset}, {first.resolution} px, batch {first.batch_size}, "
        f"{first.prompts_per_image} prompts/image, checkpointing "
        f"{'on' if first.gradient_checkpointing else 'off'}, {first.gpu_name or first.device}, "
        f"{first.trainable_parameters / 1e6:.2f} M trainable"
    )
    print(
        "ms per step (median)  "
        + "".join(f"{r.variant:>12}" for r in results)
        + ("       ratio" if len(results) == 2 else "")
    )
    labels = {"forward": "rest of forward", "optimizer": "optimizer"}
    rows = [(labels.get(p, p), [r.parts_ms[p] for r in results], "{:.1f}") for p in PARTS]
    rows.append(("step", [r.step_ms for r in results], "{:.1f}"))
    rows.append(("images/s", [r.images_per_s for r in results], "{:.2f}"))
    memory = "peak GB (CUDA)" if first.gpu_name else "peak RSS GB"
    rows.append((memory, [r.peak_memory_gb for r in results], "{:.2f}"))
    if first.flops_per_step:
        rows.append(("GFLOP per step", [r.flops_per_step / 1e9 for r in results], "{:.1f}"))
    if first.flop_bound_images_per_s:
        rows.append(("FLOP bound images/s", [r.flop_bound_images_per_s for r in results], "{:.2f}"))
    for label, values, fmt in rows:
        line = f"{label:<22}" + "".join(f"{fmt.format(v):>12}" for v in values)
        if len(values) == 2 and values[1]:
            ratio = values[0] / values[1]
            line += f"{ratio:>11.2f}x"
        print(line)
    if len(results) == 2:
        print(
            "ratio = naive / optimised (> 1: the optimised variant is faster / smaller, "
            "except images/s where < 1 is better)"
        )


MARKDOWN_COLUMNS = (
    "model",
    "preset",
    "variant",
    "resolution",
    "batch_size",
    "prompts_per_image",
    "precision",
    "gradient_checkpointing",
    "gpu_name",
    "images_per_s",
    "flop_bound_images_per_s",
    "peak_memory_gb",
    "date",
)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Result rows as a markdown table."""

    def cell(value: Any) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(MARKDOWN_COLUMNS) + " |", "|" + "---|" * len(MARKDOWN_COLUMNS)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in MARKDOWN_COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", choices=("tiny", "sam3-size", "sam2.1-large-size"), default="tiny"
    )
    parser.add_argument("--preset", default="balanced")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--prompts_per_image", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument(
        "--precision",
        choices=("bf16", "fp32"),
        default=None,
        help="of the optimised variant; default bf16 on CUDA, fp32 on CPU",
    )
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--compare", action="store_true", help="naive vs optimised, interleaved")
    parser.add_argument("--flops", action="store_true", help="count FLOPs (one extra step)")
    parser.add_argument("--json", type=Path, default=None, help="append the rows to this file")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--parse_only", action="store_true", help="check the arguments, exit")
    parser.add_argument("--markdown", type=Path, default=None, help="print a JSON file as a table")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown_table(json.loads(args.markdown.read_text())))
        return []
    if args.parse_only:
        load_config(args.preset)
        print(f"ok: {vars(args)}")
        return []
    if args.model == "sam2.1-large-size":
        print("sam2.1-large-size: the SAM2.1 promptable task is not on this branch yet; skipped")
        return []
    cuda = torch.device(args.device).type == "cuda"
    precision = args.precision or ("bf16" if cuda else "fp32")
    optimised = Variant("optimised", precision, True, -1, cuda)
    naive = Variant("naive", "fp32", False, None, False)
    results = measure(args, [naive, optimised] if args.compare else [optimised])
    print_table(results)
    if args.json:
        rows = json.loads(args.json.read_text()) if args.json.is_file() else []
        rows += [asdict(r) for r in results]
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return results


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
