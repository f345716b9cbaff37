"""SAM3 (``Sam3Model``): the facts the trainer, LoRA, the CLI and the predictor ask for."""

from __future__ import annotations

import re
from typing import Any

from transformers import Sam3Model, Sam3Processor

from sam3_lora.tasks.spec import TaskSpec

#: LoRA component flags (``lora.apply_to_<component>``) -> the top-level ``Sam3Model`` modules
#: they cover. ``text_projection`` maps the text encoder's output into the detector (Meta's
#: text-encoder "resizer"); ``dot_product_scoring`` is the detector's classification head.
COMPONENTS: dict[str, tuple[str, ...]] = {
    "vision_encoder": ("vision_encoder",),
    "text_encoder": ("text_encoder", "text_projection"),
    "geometry_encoder": ("geometry_encoder",),
    "detr_encoder": ("detr_encoder",),
    "detr_decoder": ("detr_decoder", "dot_product_scoring"),
    "mask_decoder": ("mask_decoder",),
}

#: SAM3's image normalisation (Meta's training and ``Sam3ImageProcessor``): mean 0.5, std 0.5.
PIXEL_MEAN = (0.5, 0.5, 0.5)
PIXEL_STD = (0.5, 0.5, 0.5)

ALIASES = {
    "tiny": "the small pretrained SAM3 shipped in assets/tiny-sam3 (shapes)",
    "tiny-random": "a randomly initialised tiny SAM3 (same classes, small config), for tests",
    "sam3-size": "the released SAM3 architecture on the meta device, without weights",
}

GATED_HINT = (
    "SAM3 weights are gated: accept the licence on https://huggingface.co/facebook/sam3, run "
    "`hf auth login`, then download once with `hf download facebook/sam3` (or point "
    "`model.name_or_path` at a local folder). Offline, use `--model tiny`."
)

_VIT_LAYER = re.compile(r"vision_encoder\.backbone\.layers\.(\d+)\.")
#: Layer 0 of the ViT trunk for layer decay: Meta's ``patch_embed`` and ``ln_pre``.
_VIT_STEM = (
    "vision_encoder.backbone.embeddings.patch_embeddings.",
    "vision_encoder.backbone.layer_norm.",
)

#: Base learning rates of Meta's SAM3 full fine-tuning (``lr_transformer`` for ``default``,
#: ``lr_vision_backbone``, ``lr_language_backbone``), multiplied by ``finetune.lr_scale`` (0.1).
FULL_LEARNING_RATES = {"vision_encoder": 2.5e-4, "text_encoder": 5e-5, "default": 8e-4}

#: Kept in float under ``model.quantization: 4bit`` (about 1 % of the released model's linear
#: weights): the small components (geometry encoder, mask decoder), the detector's heads (box,
#: presence, reference points, box position bias, the scoring head) and the text projection.
#: 4-bit: the ViT, the CLIP text encoder and the DETR encoder / decoder layers.
FLOAT_MODULES = (
    "text_projection",
    "geometry_encoder",
    "detr_decoder.box_head",
    "detr_decoder.presence_head",
    "detr_decoder.ref_point_head",
    "detr_decoder.box_rpb_embed_x",
    "detr_decoder.box_rpb_embed_y",
    "dot_product_scoring",
    "mask_decoder",
)


def build_alias(name: str) -> tuple[Any, Any]:
    """``tiny`` -> the shipped folder's path; ``tiny-random`` / ``sam3-size`` -> built models."""
    from sam3_lora.tasks.concept import tiny

    if name == "tiny":
        return tiny.tiny_sam3_dir(), None
    if name == "tiny-random":
        return tiny.random_tiny_sam3()
    if name == "sam3-size":
        return tiny.sam3_size_model(), None
    raise KeyError(name)


def layer_of(name: str, num_layers: int) -> tuple[str, int, int] | None:
    """``(component, layer index, blocks)`` of a ViT trunk parameter, for layer-wise decay:
    block k (from 0) is layer k + 1 and gets ``decay^(num_layers - k)``, the patch embedding and
    the pre-block LayerNorm layer 0 (``decay^(num_layers + 1)``), as Meta's ``get_layer_id``.
    None (no decay) elsewhere, the position embedding included (Meta's ``*pos_embed*``
    override to 1)."""
    name = name.removeprefix("base_model.model.")
    match = _VIT_LAYER.search(name)
    if match:
        return "vision_encoder", int(match.group(1)) + 1, num_layers
    if name.startswith(_VIT_STEM):
        return "vision_encoder", 0, num_layers
    return None


def build_task(config: Any, loaded: Any) -> Any:
    from sam3_lora.tasks.concept.recipe import build_concept_task

    return build_concept_task(config, loaded)


def memory_probe(config: Any, model: Any, resolution: int | None) -> Any:
    from sam3_lora.tasks.concept.memory import ConceptMemoryProbe

    return ConceptMemoryProbe(config, model, resolution)


def build_recipe(config: Any, loaded: Any) -> Any:
    from sam3_lora.tasks.concept.recipe import build_concept_recipe

    return build_concept_recipe(config, loaded)


SPEC = TaskSpec(
    family="sam3",
    task="concept",
    model_class=Sam3Model,
    processor_class=Sam3Processor,
    default_model="facebook/sam3",
    components=COMPONENTS,
    default_components=("vision_encoder", "mask_decoder"),
    pixel_mean=PIXEL_MEAN,
    pixel_std=PIXEL_STD,
    aliases=ALIASES,
    build_alias=build_alias,
    build_recipe=build_recipe,
    layer_of=layer_of,
    full_learning_rates=FULL_LEARNING_RATES,
    build_task=build_task,
    gated_hint=GATED_HINT,
    # CLIP's own output projection: Sam3Model projects text features with its top-level
    # `text_projection` instead.
    unused_modules=("text_encoder.text_projection",),
    float_modules=FLOAT_MODULES,
    hub_architectures={"facebook/sam3": "sam3-size"},
    memory_probe=memory_probe,
)
