"""What the rest of the code needs to know about the promptable models, in one place.

Two families share the task code: ``sam2`` (SAM2 / SAM2.1, ``Sam2Model`` + ``Sam2Processor``,
Hiera image encoder, 1024 px, ImageNet statistics) and ``sam3_tracker`` (SAM3's interactive
point / box mode, ``Sam3TrackerModel`` + ``Sam3TrackerProcessor``, SAM3's ViT, 1008 px, mean and
std 0.5). Both have the same top level: ``vision_encoder``, ``prompt_encoder``, ``mask_decoder``,
``shared_image_embedding`` (the image-wide positional encoding, a buffer copied from the prompt
encoder's) and the ``no_memory_embedding`` parameter (added to the image embedding; Meta's
``no_mem_embed``).

Real-size architectures build on the meta device without weights (:func:`size_model`); their
parameter counts are in docs/sam2.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import (
    Sam2Config,
    Sam2ImageProcessor,
    Sam2Model,
    Sam2Processor,
    Sam3ImageProcessor,
    Sam3TrackerConfig,
    Sam3TrackerModel,
    Sam3TrackerProcessor,
)

from sam3_lora.errors import ConfigError
from sam3_lora.tasks.spec import TaskSpec

FAMILIES = ("sam2", "sam3_tracker")

#: LoRA component flag -> the model's top-level modules / parameters it covers. Every parameter
#: belongs to exactly one component (tests check it on tiny and real-size models of both families).
#: ``no_memory_embedding`` is a model-level vector added to the image embedding the mask decoder
#: reads; Meta trains it with the decoder's learning rate (not the image encoder's), so it is here.
COMPONENTS: dict[str, tuple[str, ...]] = {
    "image_encoder": ("vision_encoder",),
    "prompt_encoder": ("prompt_encoder", "shared_image_embedding"),
    "mask_decoder": ("mask_decoder", "no_memory_embedding"),
}

#: Mask-decoder LoRA targets (both families): the two-way transformer's attention projections and
#: MLPs. ``mlp.proj_in`` keeps the hypernetwork MLPs and the IoU / object-score heads (whose
#: layers are also named ``proj_in`` / ``proj_out``) out.
MASK_DECODER_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "mlp.proj_in", "mlp.proj_out")

#: Meta's SAM2.1 fine-tuning learning rates (``scratch.vision_lr`` for the image encoder,
#: ``scratch.base_lr`` for the rest), used as they are (``finetune.lr_scale`` 1 for these families).
FULL_LEARNING_RATES = {"image_encoder": 3e-6, "default": 5e-6}
FULL_LR_SCALE = 1.0

SAM2_SIZES = ("tiny", "small", "base-plus", "large")

#: The released SAM2.1 checkpoints on the Hugging Face hub.
SAM2_HUB_IDS = {size: f"facebook/sam2.1-hiera-{size}" for size in SAM2_SIZES}
SAM3_TRACKER_HUB_ID = "facebook/sam3"

# Hiera settings of the released SAM2.1 sizes (Meta's sam2/configs/sam2.1/sam2.1_hiera_*.yaml,
# as transformers' convert_sam2_to_hf.py writes them). Heads and widths double at each stage.
_HIERA: dict[str, dict[str, object]] = {
    "tiny": {},
    "small": {"blocks_per_stage": [1, 2, 11, 2], "global_attention_blocks": [7, 10, 13]},
    "base-plus": {
        "hidden_size": 112,
        "embed_dim_per_stage": [112, 224, 448, 896],
        "num_attention_heads_per_stage": [2, 4, 8, 16],
        "blocks_per_stage": [2, 3, 16, 3],
        "global_attention_blocks": [12, 16, 20],
        "window_positional_embedding_background_size": [14, 14],
    },
    "large": {
        "hidden_size": 144,
        "embed_dim_per_stage": [144, 288, 576, 1152],
        "num_attention_heads_per_stage": [2, 4, 8, 16],
        "blocks_per_stage": [2, 6, 36, 4],
        "global_attention_blocks": [23, 33, 43],
        "window_positional_embedding_background_size": [7, 7],
        "window_size_per_stage": [8, 4, 16, 8],
    },
}


@dataclass(frozen=True)
class ImageInput:
    """How images enter the model: square resize to ``resolution``, then ``(x/255 - mean) / std``.

    The processors resize without keeping the aspect ratio (bilinear, antialiased) and scale
    point / box coordinates by ``resolution / width`` and ``resolution / height``.
    """

    resolution: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_processor(cls, processor: object) -> ImageInput:
        """Read the statistics from a ``Sam2Processor`` / ``Sam3TrackerProcessor`` (or its image
        processor), so that a model is always fed as its own processor would feed it."""
        image_processor = getattr(processor, "image_processor", processor)
        size = image_processor.size
        height, width = (size["height"], size["width"]) if "height" in size else (None, None)
        if height is None or height != width:
            raise ConfigError(
                f"{type(image_processor).__name__} resizes to {dict(size)}; the promptable task "
                "needs a square size {'height': S, 'width': S}"
            )
        return cls(
            resolution=int(height),
            mean=tuple(float(v) for v in image_processor.image_mean),
            std=tuple(float(v) for v in image_processor.image_std),
        )


@dataclass(frozen=True)
class PromptableSpec:
    """Facts of one model family.

    Attributes:
        family: ``sam2`` or ``sam3_tracker``.
        model_class / config_class / processor_class / image_processor_class: transformers classes.
        image_input: the released model's resolution and normalisation.
        lora_targets: per component, the dotted name suffixes of the default LoRA layers (image
            encoder: attention projections only; mask decoder: :data:`MASK_DECODER_TARGETS`).
        lora_components: components that carry LoRA by default (the prompt encoder stays frozen).
    """

    family: str
    model_class: type
    config_class: type
    processor_class: type
    image_processor_class: type
    image_input: ImageInput
    lora_targets: dict[str, tuple[str, ...]] = field(default_factory=dict)
    lora_components: tuple[str, ...] = ("image_encoder", "mask_decoder")


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SPECS: dict[str, PromptableSpec] = {
    "sam2": PromptableSpec(
        family="sam2",
        model_class=Sam2Model,
        config_class=Sam2Config,
        processor_class=Sam2Processor,
        image_processor_class=Sam2ImageProcessor,
        image_input=ImageInput(1024, IMAGENET_MEAN, IMAGENET_STD),
        # Hiera: ``blocks.N.attn.qkv`` / ``blocks.N.attn.proj``. A bare ``proj`` would also hit the
        # stage-transition projections ``blocks.N.proj`` and ``mlp.proj_in`` the MLPs.
        lora_targets={
            "image_encoder": ("attn.qkv", "attn.proj"),
            "mask_decoder": MASK_DECODER_TARGETS,
        },
    ),
    "sam3_tracker": PromptableSpec(
        family="sam3_tracker",
        model_class=Sam3TrackerModel,
        config_class=Sam3TrackerConfig,
        processor_class=Sam3TrackerProcessor,
        # facebook/sam3 ships SAM3's image processor (1008 px, mean = std = 0.5).
        image_processor_class=Sam3ImageProcessor,
        image_input=ImageInput(1008, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        # SAM3's ViT splits Meta's fused ``qkv`` into q / k / v and names ``proj`` ``o_proj``.
        lora_targets={
            "image_encoder": tuple(
                f"attention.{n}" for n in ("q_proj", "k_proj", "v_proj", "o_proj")
            ),
            "mask_decoder": MASK_DECODER_TARGETS,
        },
    ),
}


def get_spec(family: str) -> PromptableSpec:
    """The spec of ``family``; :class:`ConfigError` naming the known families otherwise."""
    try:
        return SPECS[family]
    except KeyError:
        raise ConfigError(
            f"model.family `{family}` is not a promptable family; use one of {', '.join(FAMILIES)}"
        ) from None


def base_model(model: torch.nn.Module) -> Sam2Model | Sam3TrackerModel:
    """The ``Sam2Model`` / ``Sam3TrackerModel`` inside PEFT / Accelerate / DDP wrappers."""
    while not isinstance(model, Sam2Model | Sam3TrackerModel):
        if hasattr(model, "get_base_model"):  # peft.PeftModel
            model = model.get_base_model()
        elif hasattr(model, "module"):  # DDP, Accelerate
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        else:
            raise TypeError(
                f"expected a Sam2Model or Sam3TrackerModel (possibly wrapped), got "
                f"{type(model).__name__}"
            )
    return model


def family_of(model: torch.nn.Module) -> str:
    """``sam2`` or ``sam3_tracker`` for a (possibly wrapped) model."""
    return "sam3_tracker" if isinstance(base_model(model), Sam3TrackerModel) else "sam2"


def component_of(name: str) -> str | None:
    """The component of a parameter or module name of the bare model (None if outside all)."""
    for component, prefixes in COMPONENTS.items():
        if any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes):
            return component
    return None


def lora_target_modules(
    model: torch.nn.Module,
    components: Iterable[str] | None = None,
    targets: dict[str, tuple[str, ...]] | None = None,
) -> list[str]:
    """Full names of the ``nn.Linear`` layers that get LoRA by default.

    Args:
        model: a bare ``Sam2Model`` / ``Sam3TrackerModel``.
        components: components to adapt; default: the spec's ``lora_components``.
        targets: per component, dotted name suffixes; default: the spec's ``lora_targets``.

    Returns:
        Sorted module names, e.g. ``vision_encoder.backbone.blocks.0.attn.qkv``; a list PEFT's
        ``target_modules`` accepts as is.
    """
    spec = get_spec(family_of(model))
    components = tuple(components if components is not None else spec.lora_components)
    targets = targets if targets is not None else spec.lora_targets
    unknown = [c for c in components if c not in COMPONENTS]
    if unknown:
        raise ConfigError(f"unknown LoRA component(s) {unknown}; known: {', '.join(COMPONENTS)}")
    names = []
    for name, module in model.named_modules():
        component = component_of(name)
        if component not in components or not isinstance(module, torch.nn.Linear):
            continue
        suffixes = targets.get(component, ())
        if any(name == s or name.endswith("." + s) for s in suffixes):
            names.append(name)
    return sorted(names)


def unused_parameter_names(model: torch.nn.Module) -> list[str]:
    """Parameters of a bare model that the promptable forward never reaches (no gradient).

    ``Sam3TrackerModel`` with SAM3's four-level neck (as facebook/sam3 loads) computes a 0.5-scale
    level that it drops, and adds ``no_memory_embedding`` to that dropped level. Full fine-tuning
    under DDP must freeze these (or use ``find_unused_parameters``). ``Sam2Model`` uses all.
    """
    base = base_model(model)
    if not isinstance(base, Sam3TrackerModel):
        return []
    levels = len(base.config.vision_config.scale_factors)
    kept = len(base.backbone_feature_sizes)
    if levels <= kept:
        return []
    prefixes = tuple(f"vision_encoder.neck.fpn_layers.{level}." for level in range(kept, levels))
    return ["no_memory_embedding"] + [
        n for n, _ in base.named_parameters() if n.startswith(prefixes)
    ]


def sam2_size_config(size: str) -> Sam2Config:
    """The ``Sam2Config`` of a released SAM2.1 size (``tiny``, ``small``, ``base-plus``,
    ``large``): 1024 px, 256-d prompt encoder and mask decoder."""
    if size not in _HIERA:
        raise ConfigError(f"unknown SAM2.1 size `{size}`; use one of {', '.join(SAM2_SIZES)}")
    backbone = {"model_type": "sam2_hiera_det_model", **_HIERA[size]}
    widths = backbone.get("embed_dim_per_stage", [96, 192, 384, 768])
    vision = {"backbone_config": backbone, "backbone_channel_list": list(reversed(widths))}
    return Sam2Config(vision_config=vision)


def sam2_size_model(size: str) -> Sam2Model:
    """A released SAM2.1 architecture on the meta device: no weights, no memory."""
    config = sam2_size_config(size)
    with torch.device("meta"):
        return Sam2Model(config)


def sam3_tracker_size_model() -> Sam3TrackerModel:
    """SAM3's tracker as ``facebook/sam3`` loads into ``Sam3TrackerModel`` (``Sam3TrackerConfig()``
    defaults: the 32-layer ViT and its four-level neck), on the meta device."""
    with torch.device("meta"):
        return Sam3TrackerModel(Sam3TrackerConfig())


#: ``--model`` names of the real-size architectures without weights (``lora-info``).
SIZE_MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    **{f"sam2.1-{size}-size": (lambda s=size: sam2_size_model(s)) for size in SAM2_SIZES},
    "sam3-tracker-size": sam3_tracker_size_model,
}


def size_model(name: str) -> torch.nn.Module:
    """Build one of :data:`SIZE_MODELS` (e.g. ``sam2.1-large-size``) on the meta device."""
    try:
        return SIZE_MODELS[name]()
    except KeyError:
        raise ConfigError(
            f"unknown model size `{name}`; use one of {', '.join(SIZE_MODELS)}"
        ) from None


# ------------------------------------------------------------------------------ task specs
#: ``--model`` names of each family that are not hub ids or folders.
ALIASES: dict[str, dict[str, str]] = {
    "sam2": {
        "tiny": "the small pretrained SAM2 shipped in assets/tiny-sam2 (synthetic shapes)",
        "tiny-random": "a randomly initialised tiny SAM2 (same classes, small config), for tests",
        **{
            name: f"the released SAM2.1 {name.split('-', 1)[1].removesuffix('-size')} "
            "architecture on the meta device, without weights"
            for name in SIZE_MODELS
            if name.startswith("sam2.1-")
        },
    },
    "sam3_tracker": {
        "tiny-random": "a randomly initialised tiny SAM3 tracker (same classes), for tests",
        "sam3-tracker-size": "SAM3's tracker architecture on the meta device, without weights",
    },
}


def build_alias(family: str, name: str) -> tuple[Any, Any]:
    """``tiny`` -> the shipped folder; ``tiny-random`` -> a built model and processor; the
    ``*-size`` names -> a meta-device model without processor."""
    from sam3_lora.tasks.promptable import tiny

    if name in SIZE_MODELS:
        return size_model(name), None
    if family == "sam2" and name == "tiny":
        return tiny.tiny_sam2_dir(), None
    if name == "tiny-random":
        create = tiny.create_tiny_sam2 if family == "sam2" else tiny.create_tiny_sam3_tracker
        loaded = create()
        return loaded.model, loaded.processor
    raise KeyError(name)


_HIERA_BLOCK = re.compile(r"vision_encoder\.backbone\.blocks\.(\d+)\.")
_VIT_LAYER = re.compile(r"vision_encoder\.backbone\.layers\.(\d+)\.")
#: Layer 0 of the trunk: Hiera's patch embedding; SAM3's ViT patch embedding and ``ln_pre``.
_STEM = (
    "vision_encoder.backbone.patch_embed.",
    "vision_encoder.backbone.embeddings.patch_embeddings.",
    "vision_encoder.backbone.layer_norm.",
)
#: Prefixes of the task module (``network.``) and of PEFT (``base_model.model.``) in names.
_WRAPPERS = ("network.", "base_model.model.")


def bare_name(name: str) -> str:
    """A parameter name of the bare model (the task module's / PEFT's prefixes removed)."""
    for prefix in _WRAPPERS:
        name = name.removeprefix(prefix)
    return name


def layer_of(name: str, num_layers: int) -> tuple[str, int, int] | None:
    """``(component, layer index, layers)`` of an image-encoder trunk parameter for layer-wise
    decay, as Hiera's ``get_layer_id`` counts (Meta's SAM2.1 training): with L blocks, block k
    (from 0) is layer k + 1 (lr x ``decay^(L - k)``), the patch embedding layer 0
    (``decay^(L + 1)``). None (no decay) for the rest: the position embeddings (``pos_embed``,
    ``pos_embed_window``; SAM3's ``position_embeddings``), which Meta's ``*pos_embed*`` override
    keeps at 1, and the neck, which Meta's ``apply_to: image_encoder.trunk`` leaves out. SAM3's
    ViT (``layers.k``, the patch embedding and pre-block LayerNorm layer 0) counts the same."""
    name = bare_name(name)
    match = _HIERA_BLOCK.match(name) or _VIT_LAYER.match(name)
    if match:
        return "image_encoder", int(match.group(1)) + 1, num_layers
    if name.startswith(_STEM):
        return "image_encoder", 0, num_layers
    return None


def model_size(name_or_path: str) -> str:
    """The size in a run folder's name: ``large`` for ``facebook/sam2.1-hiera-large`` or
    ``sam2.1-large-size``, else the name's last part (``tiny``, ``sam3``, a folder's name)."""
    for size in sorted(SAM2_SIZES, key=len, reverse=True):
        if re.search(rf"(hiera-|sam2\.1-){re.escape(size)}(-size)?$", name_or_path.rstrip("/")):
            return size
    last = name_or_path.rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", last).strip("-") or "model"


def build_task(config: Any, loaded: Any) -> Any:
    from sam3_lora.tasks.promptable.recipe import build_promptable_task

    return build_promptable_task(config, loaded)


def build_recipe(config: Any, loaded: Any) -> Any:
    from sam3_lora.tasks.promptable.recipe import build_promptable_recipe

    return build_promptable_recipe(config, loaded)


_GATED_HINTS = {
    "sam2": "SAM2.1 weights are public: download once with `hf download "
    "facebook/sam2.1-hiera-large` (or -tiny, -small, -base-plus), or point model.name_or_path at "
    "a local folder. Offline, use `--model tiny`.",
    "sam3_tracker": "SAM3 weights are gated: accept the licence on "
    "https://huggingface.co/facebook/sam3, run `hf auth login`, then `hf download facebook/sam3` "
    "(or point model.name_or_path at a local folder). Offline, use `--model tiny-random`.",
}


#: Kept in float under ``model.quantization: 4bit``: the prompt encoder and the mask decoder
#: (about 4 M parameters together, their outputs are the masks); the image encoder is 4-bit.
FLOAT_MODULES = ("prompt_encoder", "mask_decoder")


def memory_probe(config: Any, model: Any, resolution: int | None) -> Any:
    from sam3_lora.tasks.promptable.memory import PromptableMemoryProbe

    return PromptableMemoryProbe(config, model, resolution)


#: Hub ids -> the meta-device builders of their architectures (SAM2.0 ids: the SAM2.1 shapes).
HUB_ARCHITECTURES: dict[str, dict[str, str]] = {
    "sam2": {
        **{f"facebook/sam2.1-hiera-{s}": f"sam2.1-{s}-size" for s in SAM2_SIZES},
        **{f"facebook/sam2-hiera-{s}": f"sam2.1-{s}-size" for s in SAM2_SIZES},
    },
    "sam3_tracker": {SAM3_TRACKER_HUB_ID: "sam3-tracker-size"},
}


def _task_spec(family: str, default_model: str, hub_ids: tuple[str, ...]) -> TaskSpec:
    facts = SPECS[family]
    return TaskSpec(
        family=family,
        task="promptable",
        model_class=facts.model_class,
        processor_class=facts.processor_class,
        default_model=default_model,
        components=COMPONENTS,
        default_components=facts.lora_components,
        pixel_mean=facts.image_input.mean,
        pixel_std=facts.image_input.std,
        aliases=ALIASES[family],
        build_alias=lambda name: build_alias(family, name),
        build_recipe=build_recipe,
        layer_of=layer_of,
        full_learning_rates=FULL_LEARNING_RATES,
        full_lr_scale=FULL_LR_SCALE,
        build_task=build_task,
        gated_hint=_GATED_HINTS[family],
        default_target_modules=facts.lora_targets,
        hub_ids=hub_ids,
        hub_architectures=HUB_ARCHITECTURES[family],
        memory_probe=memory_probe,
        default_layout="sam2_lora",
        model_size=model_size,
        best_metrics=(("iou", "val/miou"), ("dice", "val/dice")),
        float_modules=FLOAT_MODULES,
    )


SAM2_SPEC = _task_spec(
    "sam2",
    SAM2_HUB_IDS["large"],
    tuple(SAM2_HUB_IDS.values()) + tuple(f"facebook/sam2-hiera-{s}" for s in SAM2_SIZES),
)
SAM3_TRACKER_SPEC = _task_spec("sam3_tracker", SAM3_TRACKER_HUB_ID, ())
