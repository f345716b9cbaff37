"""Training-step benchmark: speed, time split and peak memory of a task's real training step.

Each step is what ``sam3-lora train`` runs: batch -> ``task.model`` -> ``task.loss`` -> backward
-> AdamW. Concept (SAM3, ``--model tiny|sam3-size``): vision features once per image, shared by
its prompts. Promptable (``--model tiny-sam2|sam2.1-large-size|sam3-tracker-size``, preset
``sam2_lora``): the first prompt and the corrective clicks of every object, image embeddings once
per image. The step is split into data (building the batch and moving it to the device), vision
forward (timed with forward hooks on ``vision_encoder``), rest of forward, loss, backward and
optimizer (step + zero_grad); CUDA events on a GPU, ``perf_counter`` on CPU.

``--quantization 4bit``: the QLoRA base (bitsandbytes). ``--compile``: ``training.compile`` (the
vision encoder compiled); ``--compare_compile`` interleaves an eager and a compiled copy. The
warm-up step's time is reported apart (``first step``: with compile, compiling is in it).
``--cache_vision_features``: ``training.cache_vision_features`` (frozen vision encoder: preset
``decoder_only``); the batches repeat their image indices, so steps after the warm-up hit the
cache, as epochs after the first do.

``--compare`` interleaves, in one process, the naive variant (fp32, the image re-encoded for
every prompt, mask losses at the full target resolution) with the optimised one (the
``--precision`` autocast, shared vision features, mask losses on the predicted-mask grid, fused
AdamW on CUDA) and prints the ratios. Medians over ``--steps`` steps after one warm-up step each.

    python benchmarks/train_step.py --model tiny --compare                  # CPU, seconds
    python benchmarks/train_step.py --model sam3-size --prompts_per_image 4 # GPU
    python benchmarks/train_step.py --model sam3-size --resolution 336      # CPU, reduced size
    python benchmarks/train_step.py --model tiny-sam2 --batch_size 1         # SAM2, CPU
    python benchmarks/train_step.py --model tiny --compare_compile          # eager vs compiled

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from bench_prompt_sharing import naive_forward
from step_models import DEFAULT_PRESETS, MODELS, BenchTask, build_bench_task, family_of

from sam3_lora.config import load_config
from sam3_lora.frozen_weights import frozen_weights_dtype

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
    compile: bool = False


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
    family: str = "sam3"
    quantization: str = "none"
    compile: bool = False
    first_step_ms: float | None = None  # the warm-up step (with compile: compiling included)
    weights_gb: float | None = None  # base + adapters (4-bit weights with their statistics)
    mask_loss_resolution: int | None = None  # concept: the mask-loss grid (None: target size)
    predicted_peak_memory_gb: float | None = None  # lora-info --memory (--predict_memory)


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


def forward(bench: BenchTask, variant: Variant, batch: Any) -> Any:
    """The variant's forward (concept: the image re-encoded per prompt when the variant does
    not share it, and the variant's mask-loss grid set for the loss that follows)."""
    task = bench.task
    if bench.family == "sam3":
        task.criterion.weights.mask_loss_resolution = variant.mask_loss_resolution
        outputs = naive_forward(task, batch) if not variant.share_vision else task.model(batch)
    else:
        outputs = task.model(batch)
    return outputs


def run_step(
    bench: BenchTask,
    optimizer: torch.optim.Optimizer,
    variant: Variant,
    timer: Timer,
) -> None:
    """One training step of ``variant``, its parts recorded in ``timer``."""
    task = bench.task
    device = next(task.model.parameters()).device
    timer.start("data")
    batch = bench.new_batch().to(device)
    timer.stop("data")
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=variant.precision == "bf16"):
        timer.start("forward")
        outputs = forward(bench, variant, batch)
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


def count_flops(bench: BenchTask, variant: Variant) -> float:
    """FLOPs of one forward + backward (``torch.utils.flop_counter``: matmuls, convolutions and
    attention, counted from shapes; element-wise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    task = bench.task
    device = next(task.model.parameters()).device
    batch = bench.new_batch().to(device)
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=variant.precision == "bf16"):
            loss = task.loss(forward(bench, variant, batch), batch)["loss"]
        loss.backward()
    task.model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def peak_tflops(gpu_name: str | None) -> float | None:
    """The GPU's dense bf16 peak (TFLOP/s) when known."""
    if gpu_name is None:
        return None
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu_name), None)


def build(args: argparse.Namespace, compile_vision: bool, precision: str = "fp32") -> BenchTask:
    """The benchmark's task on ``args.device`` (compiled or not), its frozen weights stored as
    a training run in ``precision`` stores them."""
    overrides = {**config_overrides(args), "training.compile": compile_vision}
    bench = build_bench_task(
        args.model,
        args.preset,
        args.resolution,
        args.batch_size,
        args.prompts_per_image,
        overrides,
        args.device,
        frozen_dtype=training_frozen_dtype(args, precision),
    )
    bench.task.model.to(args.device).train()
    return bench


def training_frozen_dtype(args: argparse.Namespace, precision: str) -> torch.dtype | None:
    """The dtype a training run of these flags in ``precision`` stores frozen weights in."""
    config = load_config(args.preset, config_overrides(args))
    return frozen_weights_dtype(config, "bf16" if precision == "bf16" else "no")


def predicted_peak_gb(
    args: argparse.Namespace, precision: str, mask_loss_resolution: int | None
) -> float:
    """``lora-info --memory``'s predicted peak (10^9 bytes) for these flags on a GPU, with the
    variant's mask-loss grid (``loss.mask_loss_resolution``)."""
    from sam3_lora.memory.build import memory_model
    from sam3_lora.memory.estimate import MemorySettings

    overrides = config_overrides(args)
    if family_of(args.model) == "sam3":
        overrides["loss.mask_loss_resolution"] = mask_loss_resolution
    config = load_config(args.preset, overrides)
    model, _ = memory_model(config, args.resolution, target="cuda")
    settings = MemorySettings(
        args.batch_size,
        args.prompts_per_image,
        precision,
        args.gradient_checkpointing,
        qlora=args.quantization == "4bit",
    )
    return model.estimate(settings).total / 1e9


def resident_bytes(bench: BenchTask, optimizer: torch.optim.Optimizer) -> int:
    """Bytes a run keeps on the device between steps: its weights and optimizer states."""
    tensors = list(bench.task.model.parameters()) + list(bench.task.model.buffers())
    tensors += [t for state in optimizer.state.values() for t in state.values()
                if isinstance(t, torch.Tensor)]  # fmt: skip
    return sum(t.numel() * t.element_size() for t in tensors)


def measure(args: argparse.Namespace, runs: list[tuple[Variant, BenchTask]]) -> list[Result]:
    """Interleave ``args.steps`` steps of each (variant, task) run after one warm-up step each
    (the warm-up's time is kept: with ``training.compile`` it includes compiling)."""
    device = torch.device(args.device)
    timer = Timer(device)
    optimizers, hooked = {}, set()
    for variant, bench in runs:
        if variant.mask_loss_resolution == -1:
            variant.mask_loss_resolution = bench.mask_side
        params = [p for p in bench.task.model.parameters() if p.requires_grad]
        optimizers[variant.name] = torch.optim.AdamW(
            params, lr=1e-4, fused=variant.fused_adamw or None
        )
        if id(bench.vision) not in hooked:
            hooked.add(id(bench.vision))
            bench.vision.register_forward_pre_hook(lambda *_: timer.start("vision"))
            bench.vision.register_forward_hook(lambda *_: timer.stop("vision"))

    parts: dict[str, list[dict[str, float]]] = {v.name: [] for v, _ in runs}
    first_ms = dict.fromkeys(parts, 0.0)
    peaks = dict.fromkeys(parts, 0.0)
    for step in range(args.steps + 1):
        for variant, bench in runs:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            run_step(bench, optimizers[variant.name], variant, timer)
            totals = timer.totals_ms()
            if device.type == "cuda":
                peaks[variant.name] = max(peaks[variant.name], torch.cuda.max_memory_allocated())
            if step:
                parts[variant.name].append(totals)
            else:  # the warm-up step (compiling, allocator, lazy init)
                first_ms[variant.name] = sum(totals.values()) - totals.get("vision", 0.0)
    # With two models on the GPU (naive fp32 masters beside bf16 frozen weights, or eager beside
    # compiled) a variant's peak would include the other's weights and AdamW states.
    others = {
        variant.name: sum(resident_bytes(b, optimizers[v.name]) for v, b in runs if b is not bench)
        for variant, bench in runs
    }
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    peak = peak_tflops(gpu_name)
    results = []
    for variant, bench in runs:
        params = [p for p in bench.task.model.parameters() if p.requires_grad]
        median = {
            name: statistics.median(s.get(name, 0.0) for s in parts[variant.name]) for name in PARTS
        }
        median["forward"] -= median["vision"]  # "rest of forward"
        step_ms = statistics.median(
            sum(s.values()) - s.get("vision", 0.0) for s in parts[variant.name]
        )
        flops = count_flops(bench, variant) if args.flops else None
        bound = peak * 1e12 / flops * args.batch_size if flops and peak else None
        results.append(
            Result(
                model=args.model,
                preset=args.preset,
                variant=variant.name,
                resolution=bench.resolution,
                batch_size=args.batch_size,
                prompts_per_image=args.prompts_per_image,
                precision=variant.precision,
                gradient_checkpointing=args.gradient_checkpointing,
                device=device.type,
                gpu_name=gpu_name,
                images_per_s=args.batch_size / step_ms * 1e3,
                step_ms=step_ms,
                peak_memory_gb=((peaks[variant.name] - others[variant.name]) if gpu_name else rss)
                / 1e9,
                trainable_parameters=sum(p.numel() for p in params),
                flops_per_step=flops,
                flop_bound_images_per_s=bound,
                date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                parts_ms=median,
                family=bench.family,
                quantization=args.quantization,
                compile=variant.compile,
                first_step_ms=first_ms[variant.name],
                weights_gb=bench.weights["total"] / 1e9,
                mask_loss_resolution=variant.mask_loss_resolution,
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
        f"{first.trainable_parameters / 1e6:.2f} M trainable, base "
        f"{'4-bit' if first.quantization == '4bit' else 'float'}"
        + (
            f", mask loss at {first.mask_loss_resolution or 'target size'}"
            if first.family == "sam3" and first.variant != "naive"
            else ""
        )
    )
    print(
        "ms per step (median)  "
        + "".join(f"{r.variant:>12}" for r in results)
        + ("       ratio" if len(results) == 2 else "")
    )
    labels = {"forward": "rest of forward", "optimizer": "optimizer"}
    rows = [(labels.get(p, p), [r.parts_ms[p] for r in results], "{:.1f}") for p in PARTS]
    rows.append(("step", [r.step_ms for r in results], "{:.1f}"))
    rows.append(("first step (warm-up)", [r.first_step_ms or 0.0 for r in results], "{:.1f}"))
    rows.append(("images/s", [r.images_per_s for r in results], "{:.2f}"))
    memory = "peak GB (CUDA)" if first.gpu_name else "peak RSS GB"
    rows.append((memory, [r.peak_memory_gb for r in results], "{:.2f}"))
    rows.append(("weights MB", [(r.weights_gb or 0.0) * 1e3 for r in results], "{:.1f}"))
    if any(r.predicted_peak_memory_gb for r in results):
        predicted = [r.predicted_peak_memory_gb for r in results]  # none for the naive
        rows.append(("predicted peak GB", predicted, "{:.2f}"))
    if first.flops_per_step:
        rows.append(("GFLOP per step", [r.flops_per_step / 1e9 for r in results], "{:.1f}"))
    if first.flop_bound_images_per_s:
        rows.append(("FLOP bound images/s", [r.flop_bound_images_per_s for r in results], "{:.2f}"))
    higher_is_better = {"images/s", "FLOP bound images/s"}
    for label, values, fmt in rows:
        line = f"{label:<22}" + "".join(
            f"{fmt.format(v) if v is not None else '-':>12}" for v in values
        )
        if len(values) == 2 and values[0] and values[1]:
            # Every ratio reads "times better": > 1 when the second variant is faster / smaller.
            ratio = values[1] / values[0] if label in higher_is_better else values[0] / values[1]
            line += f"{ratio:>11.2f}x"
        print(line)
    if len(results) == 2:
        first, second = results[0].variant, results[1].variant
        print(
            f"ratio: how many times better {second} is than {first} (time and memory: "
            f"{first} / {second}; images/s: {second} / {first})"
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
    "predicted_peak_memory_gb",
    "mask_loss_resolution",
    "quantization",
    "compile",
    "first_step_ms",
    "setting",
    "latency_ms_per_image",
    "date",
)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Result rows as a markdown table."""

    def cell(value: Any) -> str:
        if value is None:
            return ""
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(MARKDOWN_COLUMNS) + " |", "|" + "---|" * len(MARKDOWN_COLUMNS)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in MARKDOWN_COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=tuple(MODELS), default="tiny")
    parser.add_argument(
        "--preset", default=None, help="default: balanced (SAM3), sam2_lora (promptable)"
    )
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument(
        "--prompts_per_image", type=int, default=4, help="concept: prompts; promptable: objects"
    )
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument(
        "--precision",
        choices=("bf16", "fp32"),
        default=None,
        help="of the optimised variant; default bf16 on CUDA, fp32 on CPU",
    )
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument(
        "--quantization", choices=("none", "4bit"), default="none", help="4bit: QLoRA base"
    )
    parser.add_argument("--compile", action="store_true", help="training.compile: true")
    parser.add_argument(
        "--compare_compile", action="store_true", help="eager vs compiled, interleaved"
    )
    parser.add_argument(
        "--cache_vision_features",
        action="store_true",
        help="training.cache_vision_features (a frozen vision encoder: e.g. decoder_only)",
    )
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--compare", action="store_true", help="naive vs optimised, interleaved")
    parser.add_argument("--flops", action="store_true", help="count FLOPs (one extra step)")
    parser.add_argument(
        "--mask_loss",
        choices=("grid", "full"),
        default="grid",
        help="concept, optimised variant: mask loss on the predicted-mask grid, or at the full "
        "target size (Meta's; the config default loss.mask_loss_resolution: null)",
    )
    parser.add_argument(
        "--predict_memory",
        action="store_true",
        help="also the peak lora-info --memory predicts (beside the measured one)",
    )
    parser.add_argument("--json", type=Path, default=None, help="append the rows to this file")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--parse_only", action="store_true", help="check the arguments, exit")
    parser.add_argument("--markdown", type=Path, default=None, help="print a JSON file as a table")
    args = parser.parse_args(argv)
    family = family_of(args.model)
    args.preset = args.preset or DEFAULT_PRESETS[family]
    if family != "sam3" and args.compare:
        parser.error("--compare (naive vs optimised) is the concept task's; drop it")
    if args.compare and args.compare_compile:
        parser.error("--compare and --compare_compile: one comparison per run")
    return args


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys the flags set (checked by ``--parse_only``)."""
    overrides: dict[str, Any] = {
        "model.family": family_of(args.model),
        "model.name_or_path": MODELS[args.model][1],
        "model.quantization": args.quantization,
        "training.gradient_checkpointing": args.gradient_checkpointing,
    }
    if args.cache_vision_features:
        overrides.update({"training.cache_vision_features": True, "data.augment": False})
    return overrides


def main(argv: list[str] | None = None) -> list[Result]:
    args = parse_args(argv)
    if args.markdown:
        print(markdown_table(json.loads(args.markdown.read_text())))
        return []
    if args.parse_only:
        load_config(args.preset, {**config_overrides(args), "training.compile": args.compile})
        print(f"ok: {vars(args)}")
        return []
    cuda = torch.device(args.device).type == "cuda"
    precision = args.precision or ("bf16" if cuda else "fp32")
    grid = -1 if args.mask_loss == "grid" else None  # -1: the predicted-mask side
    optimised = Variant("optimised", precision, True, grid, cuda, compile=args.compile)
    if args.compare_compile:
        eager = Variant("eager", precision, True, grid, cuda)
        compiled = Variant("compiled", precision, True, grid, cuda, compile=True)
        runs = [(eager, build(args, False, precision)), (compiled, build(args, True, precision))]
    else:
        bench = build(args, args.compile, precision)
        naive = Variant("naive", "fp32", False, None, False)
        if args.compare:  # the naive run keeps fp32 masters: its own model when they differ
            cast = training_frozen_dtype(args, precision) is not None
            runs = [(naive, build(args, False) if cast else bench), (optimised, bench)]
        else:
            runs = [(optimised, bench)]
    results = measure(args, runs)
    if args.predict_memory:
        for result in results:
            if result.variant != "naive":  # the estimate models the training step as it runs
                result.predicted_peak_memory_gb = predicted_peak_gb(
                    args, result.precision, result.mask_loss_resolution
                )
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
