"""Tiny promptable models of the released classes (``Sam2Model``, ``Sam3TrackerModel``).

Random weights, small sizes, same code paths: for tests, and as the architecture of the shipped
tiny SAM2 (trained from scratch by ``scripts/build_tiny_sam2.py``). A forward of one 128 px image
takes a few milliseconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    PretrainedConfig,
    PreTrainedModel,
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
from sam3_lora.models import LoadedModel
from sam3_lora.paths import asset_dir
from sam3_lora.tasks.promptable.spec import SAM2_SPEC, SAM3_TRACKER_SPEC

#: The folder of the shipped tiny pretrained SAM2 (package data).
TINY_SAM2_NAME = "tiny-sam2"


def tiny_sam2_dir() -> Path:
    """The shipped tiny SAM2 folder (``config.json``, ``model.safetensors``, processor files)."""
    return asset_dir(TINY_SAM2_NAME)


#: Hiera's total stride (patch stride 4, three 2x query poolings).
HIERA_STRIDE = 32
#: The prompt encoder's patch size: the image embedding is ``resolution / 16`` square.
SAM2_PATCH_SIZE = 16


def tiny_sam2_config(
    resolution: int = 128,
    hidden_size: int = 32,
    embed_dim: int = 16,
    blocks_per_stage: tuple[int, int, int, int] = (1, 1, 2, 1),
    mlp_dim: int = 64,
) -> Sam2Config:
    """A ``Sam2Config`` with small sizes (about 0.35 M parameters with the defaults).

    Hiera: ``embed_dim`` doubling per stage, heads (1, 1, 2, 2), global attention in the last
    block of the third stage (as in the released sizes: never in a stage's first, pooling block);
    FPN, prompt encoder and mask decoder ``hidden_size`` wide. Masks come out at
    ``resolution / 4``, the image embedding is ``resolution / 16`` square.

    Args:
        resolution: square input side, a multiple of 32.
        hidden_size: FPN / prompt encoder / mask decoder width (a multiple of 8).
        embed_dim: Hiera's first-stage width.
        blocks_per_stage: Hiera blocks in each of the four stages (the third needs two).
        mlp_dim: the mask decoder's MLP width.
    """
    if resolution % HIERA_STRIDE or resolution < 2 * HIERA_STRIDE:
        raise ConfigError(f"tiny SAM2 resolution {resolution} must be a multiple of 32, >= 64")
    if hidden_size % 8:
        raise ConfigError(f"tiny SAM2 hidden_size {hidden_size} must be a multiple of 8")
    blocks = list(blocks_per_stage)
    if len(blocks) != 4 or blocks[2] < 2:
        raise ConfigError(f"tiny SAM2 blocks_per_stage {blocks} must be 4 stages, the third >= 2")
    widths = [embed_dim * 2**stage for stage in range(4)]
    backbone = {
        "model_type": "sam2_hiera_det_model",
        "hidden_size": embed_dim,
        "num_attention_heads": 1,
        "image_size": [resolution, resolution],
        "embed_dim_per_stage": widths,
        "num_attention_heads_per_stage": [1, 1, 2, 2],
        "blocks_per_stage": blocks,
        "global_attention_blocks": [sum(blocks[:3]) - 1],
        "window_size_per_stage": [8, 4, 4, 2],
        "window_positional_embedding_background_size": [4, 4],
    }
    feature_sizes = [[resolution // stride] * 2 for stride in (4, 8, 16)]
    return Sam2Config(
        vision_config={
            "backbone_config": backbone,
            "backbone_channel_list": list(reversed(widths)),
            "backbone_feature_sizes": feature_sizes,
            "fpn_hidden_size": hidden_size,
        },
        prompt_encoder_config={
            "hidden_size": hidden_size,
            "image_size": resolution,
            "patch_size": SAM2_PATCH_SIZE,
            "mask_input_channels": 8,
        },
        mask_decoder_config={
            "hidden_size": hidden_size,
            "mlp_dim": mlp_dim,
            "num_attention_heads": 4,
            "iou_head_hidden_dim": hidden_size,
        },
    )


def tiny_sam2_processor(resolution: int = 128) -> Sam2Processor:
    """A ``Sam2Processor`` for :func:`tiny_sam2_config` (ImageNet statistics, as SAM2)."""
    mask = resolution // 4
    image_processor = Sam2ImageProcessor(
        size={"height": resolution, "width": resolution},
        mask_size={"height": mask, "width": mask},
    )
    return Sam2Processor(image_processor)


def create_tiny_sam2(seed: int = 0, resolution: int = 128) -> LoadedModel:
    """A randomly initialised tiny ``Sam2Model`` (eval mode) and its processor."""
    model = _random_model(Sam2Model, tiny_sam2_config(resolution), seed, "tiny-random-sam2")
    return LoadedModel(
        model=model,
        processor=tiny_sam2_processor(resolution),
        source="tiny-random",
        spec=SAM2_SPEC,
    )


def tiny_sam3_tracker_config(resolution: int = 112, hidden_size: int = 32) -> Sam3TrackerConfig:
    """A ``Sam3TrackerConfig`` with small sizes (about 0.13 M parameters).

    A 2-layer, 32-d ViT with patch 14 (global attention in layer 1) and the four-level neck of the
    released tracker (scales 4, 2, 1, 0.5; the 0.5 level is computed and unused, as there).

    Args:
        resolution: square input side, a multiple of 28.
        hidden_size: ViT, FPN, prompt encoder and mask decoder width (a multiple of 8).
    """
    patch = 14
    if resolution % (2 * patch):
        raise ConfigError(f"tiny SAM3 tracker resolution {resolution} must be a multiple of 28")
    tokens = resolution // patch
    return Sam3TrackerConfig(
        vision_config={
            "model_type": "sam3_vision_model",
            "backbone_config": {
                "model_type": "sam3_vit_model",
                "hidden_size": hidden_size,
                "intermediate_size": 2 * hidden_size,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": resolution,
                "patch_size": patch,
                "pretrain_image_size": resolution,
                "window_size": tokens // 2,
                "global_attn_indexes": [1],
            },
            "fpn_hidden_size": hidden_size,
            "backbone_feature_sizes": [[tokens * scale] * 2 for scale in (4, 2, 1)],
        },
        prompt_encoder_config={
            "hidden_size": hidden_size,
            "image_size": resolution,
            "patch_size": patch,
            "mask_input_channels": 8,
        },
        mask_decoder_config={
            "hidden_size": hidden_size,
            "mlp_dim": 2 * hidden_size,
            "num_attention_heads": 4,
            "iou_head_hidden_dim": hidden_size,
        },
    )


def tiny_sam3_tracker_processor(resolution: int = 112) -> Sam3TrackerProcessor:
    """A ``Sam3TrackerProcessor`` with SAM3's image processor (mean = std = 0.5), as in
    facebook/sam3."""
    mask = 4 * resolution // 14
    image_processor = Sam3ImageProcessor(
        size={"height": resolution, "width": resolution},
        mask_size={"height": mask, "width": mask},
    )
    return Sam3TrackerProcessor(image_processor)


def create_tiny_sam3_tracker(seed: int = 0, resolution: int = 112) -> LoadedModel:
    """A randomly initialised tiny ``Sam3TrackerModel`` (eval mode) and its processor."""
    config = tiny_sam3_tracker_config(resolution)
    model = _random_model(Sam3TrackerModel, config, seed, "tiny-random-sam3-tracker")
    return LoadedModel(
        model=model,
        processor=tiny_sam3_tracker_processor(resolution),
        source="tiny-random",
        spec=SAM3_TRACKER_SPEC,
    )


def _random_model(
    model_class: type[PreTrainedModel], config: PretrainedConfig, seed: int, name: str
) -> PreTrainedModel:
    """``model_class(config)`` initialised from ``seed``, named ``name``, in eval mode."""
    torch.manual_seed(seed)
    model = model_class(config)
    model.config.name_or_path = model.name_or_path = name
    return model.eval()
