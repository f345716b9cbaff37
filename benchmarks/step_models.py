"""The models and batches the step benchmarks run: each ``--model`` name -> its task and batches.

Concept (SAM3): ``tiny`` (shipped), ``sam3-size`` (the released architecture, random weights, at
``--resolution``). Promptable: ``tiny-sam2`` (shipped), ``sam2.1-large-size`` (1024 px) and
``sam3-tracker-size`` (1008 px), random weights. Random weights cost the same as trained ones.
``--quantization 4bit`` loads the base through ``sam3_lora.models.load_model`` (bitsandbytes);
a random real-size model is written to a temporary folder first (4-bit loading quantises
weights read by ``from_pretrained``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from bench_prompt_sharing import make_batch
from transformers import Sam3Config, Sam3Model

from sam3_lora.config import load_config
from sam3_lora.frozen_weights import cast_frozen_weights
from sam3_lora.models import LoadedModel, load_model
from sam3_lora.quantization import weight_bytes
from sam3_lora.tasks import get_spec
from sam3_lora.tasks.promptable.samples import PromptBatch

#: ``--model`` -> (family, the name ``load_model`` knows, input size or None: the model's own).
MODELS: dict[str, tuple[str, str, int | None]] = {
    "tiny": ("sam3", "tiny", None),
    "sam3-size": ("sam3", "sam3-size", 1008),
    "tiny-sam2": ("sam2", "tiny", None),
    "sam2.1-large-size": ("sam2", "sam2.1-large-size", 1024),
    "sam3-tracker-size": ("sam3_tracker", "sam3-tracker-size", 1008),
}
#: The preset a family's rows use when ``--preset`` is not given.
DEFAULT_PRESETS = {"sam3": "balanced", "sam2": "sam2_lora", "sam3_tracker": "sam2_lora"}


@dataclass
class BenchTask:
    """A task ready to step, with what the benchmark needs around it.

    Attributes:
        task: a ``ConceptTask`` or ``PromptableTask`` (``.model``, ``.loss``).
        family: ``model.family``.
        resolution: input side in pixels.
        vision: the module timed as "vision" (the vision / image encoder).
        new_batch: ``() -> batch`` on the CPU (random pixels, square targets).
        mask_side: concept only: the predicted-mask grid (the optimised mask-loss resolution).
        weights: :func:`sam3_lora.quantization.weight_bytes` of the base and adapters.
    """

    task: Any
    family: str
    resolution: int
    vision: torch.nn.Module
    new_batch: Callable[[], Any]
    mask_side: int | None
    weights: dict[str, int]


def family_of(model: str) -> str:
    return MODELS[model][0]


def random_sam3(resolution: int) -> Sam3Model:
    """The released SAM3 architecture with random weights, at ``resolution`` (multiple of 336:
    the ViT's 14 px patches in 24-token windows), on the current default device."""
    if resolution % 336:
        raise SystemExit(f"--resolution {resolution}: sam3-size needs a multiple of 336")
    tokens = resolution // 14
    config = Sam3Config()
    config.vision_config.backbone_config.image_size = resolution
    config.vision_config.backbone_feature_sizes = [[tokens * 4] * 2, [tokens * 2] * 2, [tokens] * 2]
    torch.manual_seed(0)
    return Sam3Model(config)


def _random_loaded(model: str, resolution: int, device: str) -> LoadedModel:
    """A real-size model with random weights, initialised on ``device`` (fast on a GPU), and a
    processor at ``resolution``."""
    from sam3_lora.tasks.concept.tiny import build_tiny_processor
    from sam3_lora.tasks.promptable.tiny import tiny_sam2_processor, tiny_sam3_tracker_processor

    family = family_of(model)
    spec = get_spec(family)
    if family == "sam3":
        with torch.device(device):
            network = random_sam3(resolution)
        processor = build_tiny_processor(resolution, 4 * resolution // 14)
    else:
        meta = spec.build_alias(MODELS[model][1])[0]
        torch.manual_seed(0)
        with torch.device(device):
            network = type(meta)(meta.config)
        make = tiny_sam2_processor if family == "sam2" else tiny_sam3_tracker_processor
        processor = make(resolution)
    network.eval()
    return LoadedModel(network, processor, f"{model} (random)", spec)


def load_base(
    model: str, resolution: int | None, quantization: str, device: str = "cpu"
) -> tuple[LoadedModel, int]:
    """The base model of ``--model`` and its input resolution (random real-size models are
    initialised on ``device``)."""
    family, name, size = MODELS[model]
    if size is None:  # a shipped tiny model: its own size only
        loaded = load_model(name, family, quantization=quantization)
        own = _own_resolution(loaded)
        if resolution not in (None, own):
            raise SystemExit(f"--resolution: {model} runs at {own} px only")
        return loaded, own
    if family != "sam3" and resolution not in (None, size):
        raise SystemExit(f"--resolution: {model} runs at {size} px only (fixed embeddings)")
    size = resolution or size
    loaded = _random_loaded(model, size, device)
    if quantization == "none":
        return loaded, size
    with tempfile.TemporaryDirectory(prefix="bench-4bit-") as folder:
        loaded.model.save_pretrained(folder, safe_serialization=True)
        loaded.processor.save_pretrained(folder)
        del loaded
        return load_model(folder, family, quantization=quantization), size


def _own_resolution(loaded: LoadedModel) -> int:
    if loaded.spec.family == "sam3":
        return int(loaded.model.config.vision_config.image_size)
    from sam3_lora.tasks.promptable.spec import ImageInput

    return ImageInput.from_processor(loaded.processor).resolution


def prompt_batch(images: int, objects: int, resolution: int) -> PromptBatch:
    """``images`` random images with ``objects`` square objects each (masks and boxes)."""
    generator = torch.Generator().manual_seed(0)
    count = images * objects
    centres = torch.rand(count, 2, generator=generator) * 0.6 + 0.2
    half = max(2, int(0.08 * resolution))
    masks = torch.zeros(count, resolution, resolution, dtype=torch.bool)
    boxes = torch.zeros(count, 4)
    for k, (x, y) in enumerate((centres * resolution).long().tolist()):
        masks[k, y - half : y + half, x - half : x + half] = True
        boxes[k] = torch.tensor([x - half, y - half, x + half, y + half], dtype=torch.float32)
    return PromptBatch(
        pixel_values=torch.randn(images, 3, resolution, resolution, generator=generator),
        object_image_index=torch.arange(images).repeat_interleave(objects),
        target_masks=masks,
        target_boxes=boxes,
        category_ids=torch.ones(count, dtype=torch.long),
        annotation_ids=torch.arange(count),
        image_indices=list(range(images)),
        original_sizes=[(resolution, resolution)] * images,
    )


def build_bench_task(
    model: str,
    preset: str | None,
    resolution: int | None,
    batch_size: int,
    prompts_per_image: int,
    overrides: dict[str, Any],
    device: str = "cpu",
    frozen_dtype: torch.dtype | None = None,
) -> BenchTask:
    """The task of ``preset`` on ``model`` (``overrides``: config keys, e.g.
    ``training.compile``, ``model.quantization``), in training mode; ``frozen_dtype``: the
    frozen linear / conv weights stored in it, as a training run in that precision stores them
    (:func:`sam3_lora.frozen_weights.frozen_weights_dtype`)."""
    family = family_of(model)
    quantization = overrides.get("model.quantization", "none")
    loaded, size = load_base(model, resolution, quantization, device)
    config = load_config(
        preset or DEFAULT_PRESETS[family],
        {"model.family": family, "model.name_or_path": MODELS[model][1], **overrides},
    )
    task = loaded.spec.build_task(config, loaded)
    if frozen_dtype is not None:
        cast_frozen_weights(task.model.network, frozen_dtype)
    task.model.train()
    network = task.model.network
    base = network.get_base_model() if hasattr(network, "get_base_model") else network
    if family == "sam3":
        mask_side = int(base.config.vision_config.backbone_feature_sizes[0][0])

        def new_batch() -> Any:
            return make_batch(batch_size, prompts_per_image, size, "cpu")
    else:
        mask_side = None

        def new_batch() -> Any:
            return prompt_batch(batch_size, prompts_per_image, size)

    return BenchTask(
        task, family, size, base.vision_encoder, new_batch, mask_side, weight_bytes(task.model)
    )
