"""Model facts of the promptable task: components, LoRA targets, real-size parameter counts."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import Sam2ImageProcessor, Sam3ImageProcessor
from transformers.models.sam2_video import Sam2VideoConfig, Sam2VideoModel

from sam3_lora.errors import ConfigError
from sam3_lora.tasks.promptable.spec import (
    COMPONENTS,
    SAM2_SIZES,
    SIZE_MODELS,
    ImageInput,
    base_model,
    component_of,
    family_of,
    get_spec,
    lora_target_modules,
    sam2_size_config,
    sam2_size_model,
    sam3_tracker_size_model,
    size_model,
)
from sam3_lora.tasks.promptable.tiny import create_tiny_sam2, create_tiny_sam3_tracker

BUILDERS = {
    "tiny-sam2": lambda: create_tiny_sam2().model,
    "tiny-sam3-tracker": lambda: create_tiny_sam3_tracker().model,
    **{f"sam2.1-{size}": (lambda s=size: sam2_size_model(s)) for size in SAM2_SIZES},
    "sam3-tracker": sam3_tracker_size_model,
}

#: Sam2Model (image path: no memory modules) of each released SAM2.1 size, measured here.
SAM2_PARAMETERS = {
    "tiny": 31_440_721,
    "small": 38_538_577,
    "base-plus": 73_328_401,
    "large": 216_924_865,
}
#: Meta's published totals of the full (video) SAM2.1 models, in millions (sam2 README).
META_PUBLISHED_MILLIONS = {"tiny": 38.9, "small": 46.0, "base-plus": 80.8, "large": 224.4}


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(BUILDERS))
def test_every_parameter_belongs_to_exactly_one_component(name: str) -> None:
    model = BUILDERS[name]()
    for parameter_name, _ in model.named_parameters():
        owners = [
            component
            for component, prefixes in COMPONENTS.items()
            if any(parameter_name == p or parameter_name.startswith(p + ".") for p in prefixes)
        ]
        assert len(owners) == 1, (parameter_name, owners)
        assert component_of(parameter_name) == owners[0]
    top_level = {n for n, _ in model.named_children()} | {
        n for n, _ in model.named_parameters(recurse=False)
    }
    assert top_level == {p for prefixes in COMPONENTS.values() for p in prefixes}


@pytest.mark.parametrize("size", SAM2_SIZES)
def test_sam2_sizes_match_the_released_architectures(size: str) -> None:
    model = sam2_size_model(size)
    assert next(model.parameters()).device.type == "meta"
    assert _count(model) == SAM2_PARAMETERS[size]
    # The same config with the video memory modules gives Meta's published model size.
    config = sam2_size_config(size)
    with torch.device("meta"):
        video = Sam2VideoModel(
            Sam2VideoConfig(
                vision_config=config.vision_config.to_dict(),
                enable_temporal_pos_encoding_for_object_pointers=True,
                enable_occlusion_spatial_embedding=True,
            )
        )
    assert abs(_count(video) / 1e6 - META_PUBLISHED_MILLIONS[size]) < 0.1


def test_sam3_tracker_size_and_aliases() -> None:
    model = size_model("sam3-tracker-size")
    assert _count(model) == 458_260_369
    assert model.config.prompt_encoder_config.image_size == 1008
    assert set(SIZE_MODELS) == {
        "sam2.1-tiny-size",
        "sam2.1-small-size",
        "sam2.1-base-plus-size",
        "sam2.1-large-size",
        "sam3-tracker-size",
    }
    assert _count(size_model("sam2.1-large-size")) == SAM2_PARAMETERS["large"]
    with pytest.raises(ConfigError, match="sam2.1-large-size"):
        size_model("sam2.1-huge-size")
    with pytest.raises(ConfigError, match="base-plus"):
        sam2_size_config("base")


def test_default_lora_targets_sam2_large() -> None:
    model = sam2_size_model("large")
    names = lora_target_modules(model)
    encoder = [n for n in names if n.startswith("vision_encoder.")]
    decoder = [n for n in names if n.startswith("mask_decoder.")]
    assert len(names) == len(encoder) + len(decoder)
    assert len(encoder) == 2 * 48  # qkv and proj of every Hiera block's attention
    assert all(n.endswith((".attn.qkv", ".attn.proj")) for n in encoder)
    # 2 two-way layers x (3 attentions x 4 + MLP 2) + the final attention's 4.
    assert len(decoder) == 2 * (3 * 4 + 2) + 4
    assert all(n.startswith("mask_decoder.transformer.") for n in decoder)
    assert "mask_decoder.transformer.layers.0.mlp.proj_in" in decoder
    all_linear = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert "vision_encoder.backbone.blocks.2.proj" in all_linear - set(names)  # stage change
    assert lora_target_modules(model, components=["prompt_encoder"]) == []
    with pytest.raises(ConfigError, match="unknown LoRA component"):
        lora_target_modules(model, components=["vision_encoder"])


def test_default_lora_targets_sam3_tracker() -> None:
    names = lora_target_modules(sam3_tracker_size_model())
    encoder = [n for n in names if n.startswith("vision_encoder.")]
    assert len(encoder) == 4 * 32
    assert all(".attention." in n for n in encoder)
    assert len(names) - len(encoder) == 2 * (3 * 4 + 2) + 4


def test_image_input_comes_from_the_processor() -> None:
    assert ImageInput.from_processor(Sam2ImageProcessor()) == get_spec("sam2").image_input
    assert get_spec("sam2").image_input.mean == (0.485, 0.456, 0.406)
    tracker = ImageInput.from_processor(Sam3ImageProcessor())
    assert tracker == get_spec("sam3_tracker").image_input
    assert tracker.resolution == 1008 and tracker.std == (0.5, 0.5, 0.5)
    tiny = create_tiny_sam2()
    assert ImageInput.from_processor(tiny.processor).resolution == 128
    with pytest.raises(ConfigError, match="square"):
        ImageInput.from_processor(Sam2ImageProcessor(size={"height": 64, "width": 32}))


def test_spec_classes_and_family_of_wrapped_models() -> None:
    sam2, tracker = get_spec("sam2"), get_spec("sam3_tracker")
    loaded = create_tiny_sam2()
    assert isinstance(loaded.model, sam2.model_class)
    assert isinstance(loaded.processor, sam2.processor_class)
    assert isinstance(create_tiny_sam3_tracker().processor, tracker.processor_class)
    targets = lora_target_modules(loaded.model)
    peft_model = get_peft_model(loaded.model, LoraConfig(r=2, target_modules=targets))
    assert family_of(peft_model) == "sam2"
    assert base_model(peft_model) is loaded.model
    assert family_of(create_tiny_sam3_tracker().model) == "sam3_tracker"
    with pytest.raises(ConfigError, match="sam2, sam3_tracker"):
        get_spec("sam3")
    with pytest.raises(TypeError, match="Sam2Model"):
        base_model(torch.nn.Linear(2, 2))
