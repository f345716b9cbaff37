"""Tiny SAM3 models of the released classes: the shipped pretrained one and random ones.

``scripts/build_tiny_sam3.py`` trains the shipped model (``assets/tiny-sam3``); its build history
is in ``docs/tiny-sam3.md``.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from transformers import CLIPTokenizer, Sam3Config, Sam3ImageProcessor, Sam3Model, Sam3Processor

from sam3_lora.paths import asset_dir

#: The folder of the shipped tiny pretrained SAM3 (package data).
TINY_SAM3_NAME = "tiny-sam3"


def tiny_sam3_dir() -> Path:
    """The shipped tiny SAM3 folder (``config.json``, ``model.safetensors``, processor files)."""
    return asset_dir(TINY_SAM3_NAME)


#: Words that the tiny tokenizer knows as single tokens (everything else is spelled out).
TINY_VOCABULARY_WORDS = (
    "circle",
    "rectangle",
    "triangle",
    "star",
    "hexagon",
    "square",
    "ellipse",
    "shape",
    "red",
    "green",
    "blue",
    "yellow",
    "white",
    "black",
)


def tiny_sam3_config(
    resolution: int = 224,
    patch_size: int = 28,
    vocab_size: int = 128,
    num_queries: int = 20,
) -> Sam3Config:
    """A SAM3 config of the released classes with small sizes (about 1.7 M parameters).

    Vision: a 96-d, 4-layer ViT (global attention in layers 1 and 3); text: a 64-d, 2-layer CLIP;
    DETR encoder / decoder: 64-d, 2 layers; ``num_queries`` object queries. With the defaults the
    ViT sees 8 x 8 tokens and masks come out at 32 x 32.
    """
    tokens = resolution // patch_size
    hidden = 64
    return Sam3Config(
        vision_config={
            "backbone_config": {
                "model_type": "sam3_vit_model",
                "hidden_size": 96,
                "intermediate_size": 384,
                "num_hidden_layers": 4,
                "num_attention_heads": 4,
                "image_size": resolution,
                "patch_size": patch_size,
                "pretrain_image_size": resolution,
                "window_size": max(tokens // 2, 1),
                "global_attn_indexes": [1, 3],
            },
            "fpn_hidden_size": hidden,
            "backbone_feature_sizes": [[tokens * 4] * 2, [tokens * 2] * 2, [tokens] * 2],
        },
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": hidden,
            "intermediate_size": hidden * 4,
            "projection_dim": hidden,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 32,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        geometry_encoder_config={
            "hidden_size": hidden,
            "num_layers": 1,
            "num_attention_heads": 4,
            "intermediate_size": hidden * 4,
            "roi_size": 3,
        },
        detr_encoder_config={
            "hidden_size": hidden,
            "num_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": hidden * 4,
        },
        detr_decoder_config={
            "hidden_size": hidden,
            "num_layers": 2,
            "num_queries": num_queries,
            "num_attention_heads": 4,
            "intermediate_size": hidden * 4,
        },
        mask_decoder_config={"hidden_size": hidden, "num_attention_heads": 4},
    )


def build_tiny_tokenizer(words: tuple[str, ...] = TINY_VOCABULARY_WORDS) -> CLIPTokenizer:
    """A CLIP BPE tokenizer with a tiny vocabulary: single characters plus whole ``words``.

    Any lower-case ASCII text tokenizes (unknown words are spelled out character by character),
    so prompts outside the word list still reach the model.
    """
    vocab: dict[str, int] = {}

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    add("<|startoftext|>")
    add("<|endoftext|>")
    for char in string.ascii_lowercase + string.digits + "-'.,":
        add(char)
        add(char + "</w>")
    merges: list[tuple[str, str]] = []
    for word in words:
        symbols = [*word[:-1], word[-1] + "</w>"]
        merged = symbols[0]
        for symbol in symbols[1:]:
            if (merged, symbol) not in merges:
                merges.append((merged, symbol))
            merged += symbol
            add(merged)
    return CLIPTokenizer(vocab=vocab, merges=merges)


def build_tiny_processor(resolution: int = 224, mask_size: int = 32) -> Sam3Processor:
    """A ``Sam3Processor`` for the tiny config: tiny tokenizer, ``resolution`` square input."""
    image_processor = Sam3ImageProcessor(
        size={"height": resolution, "width": resolution},
        mask_size={"height": mask_size, "width": mask_size},
    )
    return Sam3Processor(image_processor, build_tiny_tokenizer(), target_size=resolution)


def random_tiny_sam3(seed: int = 0) -> tuple[Sam3Model, Sam3Processor]:
    """A randomly initialised tiny SAM3 and its processor (same classes as the released model)."""
    processor = build_tiny_processor()
    config = tiny_sam3_config(vocab_size=len(processor.tokenizer))
    torch.manual_seed(seed)
    model = Sam3Model(config)
    model.config.name_or_path = model.name_or_path = "tiny-random"
    model.eval()
    return model, processor


def sam3_size_model() -> Sam3Model:
    """The released SAM3 architecture (``Sam3Config()`` defaults) on the meta device: no weights."""
    with torch.device("meta"):
        return Sam3Model(Sam3Config())
