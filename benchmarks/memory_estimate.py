"""Predicted vs measured training memory (``lora-info --memory``), and real-size predictions.

Measured: one real training step (forward + loss + backward + AdamW step, twice so that the
AdamW states exist) of the task on real tensors; predicted for the same device (on the CPU,
``target="cpu"``: its autocast and dropout kernels; on CUDA the GPU's, which the estimate
reproduces by default). Two numbers per row:

- saved: the bytes autograd saves during forward + loss (``saved_tensors_hooks``, each
  storage once, parameters excluded), against the predicted activations + weight copies;
- peak: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the peak of live tensor bytes
  (every tensor an op returns is tracked until it is freed, plus the weights), which is what
  the CUDA allocator would count; against the predicted peak.

    python benchmarks/memory_estimate.py                       # tiny SAM3 and SAM2, CPU
    python benchmarks/memory_estimate.py --sam3-size 336       # + the released SAM3 at 336 px
    python benchmarks/memory_estimate.py --predict             # real-size predictions, 1008 px
"""

from __future__ import annotations

import argparse
import datetime as dt
import weakref
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_leaves

from sam3_lora.config import load_config
from sam3_lora.frozen_weights import cast_frozen_weights, frozen_weights_dtype
from sam3_lora.memory.build import memory_model
from sam3_lora.memory.estimate import GIB, MemorySettings
from sam3_lora.memory.report import gib
from sam3_lora.models import LoadedModel, load_model

MIB = 1024**2


class LiveBytes(TorchDispatchMode):
    """The peak of the bytes of live tensors created inside (each storage once), not counting
    the storages in ``exclude`` (the weights, counted apart: a view of a weight, such as the
    transpose a bf16 weight's matmul makes, is no new memory)."""

    def __init__(self, exclude: set[int] | None = None) -> None:
        super().__init__()
        self.exclude = exclude or set()
        self.live = self.peak = 0
        self.storages: dict[int, list[int]] = {}  # data_ptr -> [bytes, python tensors]

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                self._track(tensor)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key == 0 or key in self.exclude:
            return
        entry = self.storages.get(key)
        if entry is None:
            entry = self.storages[key] = [storage.nbytes(), 0]
            self.live += entry[0]
            self.peak = max(self.peak, self.live)
        entry[1] += 1
        weakref.finalize(tensor, self._release, key, entry)

    def _release(self, key: int, entry: list[int]) -> None:
        entry[1] -= 1
        if entry[1] == 0 and self.storages.get(key) is entry:
            del self.storages[key]
            self.live -= entry[0]


class _NumpyOutside(TorchFunctionMode):
    """``Tensor.numpy()`` (the matcher's) with the dispatch modes paused: numpy refuses them."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs=None):
        if func is torch.Tensor.numpy:
            with _disable_current_modes():
                return func(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


@dataclass
class Row:
    name: str
    batch: int
    prompts: int
    checkpointing: bool
    predicted_saved: float
    measured_saved: float
    predicted_peak: float
    measured_peak: float


def concept_step(loaded: LoadedModel, config: Any, images: int, prompts: int) -> tuple:
    """The concept task of ``config`` and a step closure over a synthetic batch (2 objects
    per prompt, as the estimate assumes)."""
    from sam3_lora.tasks.concept.loss import PromptTarget
    from sam3_lora.tasks.concept.memory import OBJECTS_PER_PROMPT
    from sam3_lora.tasks.concept.recipe import build_concept_task
    from sam3_lora.tasks.concept.samples import ConceptBatch

    task = build_concept_task(config, loaded)
    frozen_dtype = frozen_weights_dtype(config, "bf16")  # as a bf16 training run stores them
    if frozen_dtype is not None:
        cast_frozen_weights(task.network, frozen_dtype)
    size = int(task.model.sam3.config.vision_config.image_size)
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]])[:OBJECTS_PER_PROMPT]
    masks = torch.zeros(len(boxes), size, size, dtype=torch.bool)
    masks[:, size // 4 : size // 2, size // 4 : size // 2] = True
    names = ["circle", "square", "star", "ring", "cross", "hexagon", "moon", "arrow"]
    batch = ConceptBatch(
        pixel_values=torch.randn(images, 3, size, size),
        prompt_image_index=torch.arange(images).repeat_interleave(prompts),
        prompts=[names[k % len(names)] for _ in range(images) for k in range(prompts)],
        prompt_category_ids=[0] * images * prompts,
        target_boxes=[boxes] * images * prompts,
        target_masks=[masks] * images * prompts,
        image_indices=list(range(images)),
    )

    def forward_loss(device: torch.device) -> tuple[torch.Tensor, list[torch.Tensor]]:
        on = batch.to(device)
        outputs = task.model(on)
        targets = [
            PromptTarget(b, m) for b, m in zip(on.target_boxes, on.target_masks, strict=True)
        ]
        loss = task.criterion(outputs, targets)["loss"]
        return loss, [v for v in vars(outputs).values() if isinstance(v, torch.Tensor)]

    return task, forward_loss


def promptable_step(loaded: LoadedModel, config: Any, images: int, objects: int) -> tuple:
    """The promptable task of ``config`` and a step closure over a synthetic batch."""
    from sam3_lora.tasks.promptable.recipe import build_promptable_task
    from sam3_lora.tasks.promptable.samples import PromptBatch

    task = build_promptable_task(config, loaded)
    frozen_dtype = frozen_weights_dtype(config, "bf16")  # as a bf16 training run stores them
    if frozen_dtype is not None:
        cast_frozen_weights(task.network, frozen_dtype)
    size = int(loaded.model.config.vision_config.backbone_config.image_size[0])
    count = images * objects
    masks = torch.zeros(count, size, size, dtype=torch.bool)
    for k in range(count):
        masks[k, size // 8 + k : size // 2 + k, size // 4 : size // 2] = True
    batch = PromptBatch(
        pixel_values=torch.randn(images, 3, size, size),
        object_image_index=torch.arange(images).repeat_interleave(objects),
        target_masks=masks,
        target_boxes=torch.tensor([[size / 4, size / 8, size / 2, size / 2]]).repeat(count, 1),
        category_ids=torch.zeros(count, dtype=torch.long),
        annotation_ids=torch.arange(count),
        image_indices=list(range(images)),
        original_sizes=[(size, size)] * images,
    )

    def forward_loss(device: torch.device) -> tuple[torch.Tensor, list[torch.Tensor]]:
        on = batch.to(device)
        outputs = task.model(on)
        loss = task.loss(outputs, on)["loss"]
        return loss, [p.mask_logits for step in outputs.steps for p in step]

    return task, forward_loss


def measure(task: Any, forward_loss: Callable, device: torch.device) -> tuple[float, float]:
    """(saved bytes of forward + loss, peak bytes of the second full step)."""
    task.model.to(device).train()
    parameters = [p for p in task.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-5)
    weights = {p.untyped_storage().data_ptr() for p in task.model.parameters()}
    cuda = device.type == "cuda"
    saved: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved.setdefault(storage.data_ptr(), storage.nbytes())
        return tensor

    peak = 0.0
    for step in range(2):
        states = sum(
            t.untyped_storage().nbytes()
            for state in optimizer.state.values()
            for t in state.values()
            if isinstance(t, torch.Tensor)
        )
        live = LiveBytes(exclude=weights)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        hooks = torch.autograd.graph.saved_tensors_hooks(
            keep if step else (lambda t: t), lambda t: t
        )
        with live if not cuda else nullcontext(), _NumpyOutside():
            with torch.autocast(device.type, dtype=torch.bfloat16), hooks:
                loss, outputs = forward_loss(device)
            if step:
                for tensor in outputs:
                    keep(tensor)
            loss.backward()
            del loss, outputs
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if cuda:
            peak = torch.cuda.max_memory_allocated()
        else:  # weights and the AdamW states of the first step were made before `live`
            static = sum(p.untyped_storage().nbytes() for p in task.model.parameters())
            peak = live.peak + static + states
    return float(sum(saved.values())), float(peak)


def compare(
    name: str,
    family: str,
    preset: str,
    points: list[tuple],
    device: torch.device,
    extra: dict | None = None,
) -> list[Row]:
    """Predicted vs measured for ``name`` at each (batch, prompts, checkpointing)."""
    rows = []
    for batch, prompts, checkpointing in points:
        overrides = {"model.name_or_path": name, "model.family": family, **(extra or {})}
        overrides["training.gradient_checkpointing"] = checkpointing
        config = load_config(preset, overrides)
        model, _ = memory_model(config, target=device.type)
        estimate = model.estimate(MemorySettings(batch, prompts, "bf16", checkpointing))
        loaded = load_model(name, family)
        build = concept_step if family == "sam3" else promptable_step
        task, step = build(loaded, config, batch, prompts)
        saved, peak = measure(task, step, device)
        rows.append(
            Row(
                f"{name}/{preset}",
                batch,
                prompts,
                checkpointing,
                estimate.activations + estimate.weight_copies,
                saved,
                estimate.total,
                peak,
            )
        )
    return rows


def print_rows(rows: list[Row]) -> None:
    print(
        f"{'model/preset':<22}{'b':>2}{'p':>3}{'ck':>4}{'saved pred':>11}{'meas':>8}"
        f"{'ratio':>7}{'peak pred':>10}{'meas':>8}{'ratio':>7}"
    )
    for r in rows:
        print(
            f"{r.name:<22}{r.batch:>2}{r.prompts:>3}{'on' if r.checkpointing else 'off':>4}"
            f"{r.predicted_saved / MIB:>11.1f}{r.measured_saved / MIB:>8.1f}"
            f"{r.predicted_saved / r.measured_saved:>7.2f}{r.predicted_peak / MIB:>10.1f}"
            f"{r.measured_peak / MIB:>8.1f}{r.predicted_peak / r.measured_peak:>7.2f}"
        )
    print("MiB; ratio = predicted / measured")


def predict_real_size() -> None:
    """Real-size predictions at the released resolution (unmeasured on a GPU)."""
    print(f"\nPredicted peak GiB (unmeasured on a GPU), {dt.date.today()}, bf16 autocast")
    print(
        f"{'model / preset':<32}{'batch':>6}{'prompts':>8}{'ckpt off':>10}{'ckpt on':>9}"
        f"{'/prompt':>9}"
    )
    cases = [("facebook/sam3", "sam3", p) for p in ("balanced", "minimal", "maximum")]
    cases += [("facebook/sam2.1-hiera-large", "sam2", "sam2_lora")]
    cases += [("facebook/sam3", "sam3_tracker", "sam2_lora")]
    for name, family, preset in cases:
        config = load_config(preset, {"model.name_or_path": name, "model.family": family})
        model, _ = memory_model(config)
        for batch in (1, 2):
            for prompts in (1, 4, 16):
                off = model.estimate(MemorySettings(batch, prompts, "bf16", False))
                on = model.estimate(MemorySettings(batch, prompts, "bf16", True))
                label = f"{family}:{name.split('/')[-1]} / {preset}"
                print(
                    f"{label:<32}{batch:>6}{prompts:>8}{off.total / GIB:>10.2f}"
                    f"{on.total / GIB:>9.2f}{off.per_prompt / GIB:>9.3f}"
                )
    config = load_config("balanced", {"model.name_or_path": "facebook/sam3"})
    model, _ = memory_model(config)
    off = model.estimate(MemorySettings(1, 4, "bf16", False))
    on = model.estimate(MemorySettings(1, 4, "bf16", True))
    print(
        f"\ntargets, balanced batch 1 (4 prompts): {gib(off.total)} (<= 12 GB), with "
        f"checkpointing {gib(on.total)} (<= 6 GB); per prompt {gib(off.per_prompt)} / "
        f"{gib(on.per_prompt)} with checkpointing (<= 0.4 GB)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--sam3-size",
        type=int,
        default=None,
        metavar="RESOLUTION",
        help="also measure the released SAM3 (random weights) at this size",
    )
    parser.add_argument("--predict", action="store_true", help="real-size predictions")
    parser.add_argument("--no-tiny", action="store_true", help="skip the tiny models")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    rows: list[Row] = []
    if not args.no_tiny:
        points = [(1, 1, False), (2, 4, False), (2, 4, True), (1, 16, False)]
        rows += compare("tiny", "sam3", "balanced", points, device)
        rows += compare("tiny", "sam3", "full_ft", [(1, 4, False)], device)
        points = [(1, 2, False), (2, 4, False), (2, 4, True)]
        rows += compare("tiny", "sam2", "sam2_lora", points, device)
    if args.sam3_size:
        rows += compare_sam3_size(args.sam3_size, device)
    if rows:
        print(
            f"{device.type}, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, "
            f"torch {torch.__version__}"
        )
        print_rows(rows)
    if args.predict:
        predict_real_size()


def compare_sam3_size(resolution: int, device: torch.device) -> list[Row]:
    """The released SAM3 architecture with random weights at ``resolution``, batch 1, 2 prompts."""
    from step_models import random_sam3

    from sam3_lora.tasks.concept.spec import SPEC
    from sam3_lora.tasks.concept.tiny import build_tiny_processor

    config = load_config("balanced", {"model.name_or_path": "sam3-size"})
    model, _ = memory_model(config, resolution, target=device.type)
    rows = []
    for checkpointing in (False, True):
        estimate = model.estimate(MemorySettings(1, 2, "bf16", checkpointing))
        config.training.gradient_checkpointing = checkpointing
        loaded = LoadedModel(random_sam3(resolution), build_tiny_processor(), "sam3-size", SPEC)
        task, step = concept_step(loaded, config, 1, 2)
        saved, peak = measure(task, step, device)
        rows.append(
            Row(
                f"sam3-size@{resolution}",
                1,
                2,
                checkpointing,
                estimate.activations + estimate.weight_copies,
                saved,
                estimate.total,
                peak,
            )
        )
    return rows


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    main()
