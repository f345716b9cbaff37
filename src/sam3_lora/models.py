"""Load SAM3 base models and processors: hub ids, local folders, the shipped tiny SAM3.

Everything here speaks the Hugging Face formats: a folder written by :func:`save_model_folder`
loads with plain ``Sam3Model.from_pretrained`` / ``Sam3Processor.from_pretrained``.
"""

from __future__ import annotations

import logging
import os
import socket
import string
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from transformers import (
    CLIPTokenizer,
    Sam3Config,
    Sam3ImageProcessor,
    Sam3Model,
    Sam3Processor,
)

from sam3_lora.errors import ModelLoadError

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_SAM3_DIR = REPO_ROOT / "assets" / "tiny-sam3"

#: ``--model`` aliases that are not hub ids or folders.
MODEL_ALIASES = {
    "tiny": "the small pretrained SAM3 shipped in assets/tiny-sam3 (shapes)",
    "tiny-random": "a randomly initialised tiny SAM3 (same classes, small config), for tests",
    "sam3-size": "the released SAM3 architecture on the meta device, without weights",
}

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


@dataclass
class LoadedModel:
    """A base model with its processor and where it came from."""

    model: Sam3Model
    processor: Sam3Processor | None
    source: str


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


def create_tiny_sam3(seed: int = 0) -> LoadedModel:
    """A randomly initialised tiny SAM3 and its processor (same classes as the released model)."""
    processor = build_tiny_processor()
    config = tiny_sam3_config(vocab_size=len(processor.tokenizer))
    torch.manual_seed(seed)
    model = Sam3Model(config)
    model.config.name_or_path = model.name_or_path = "tiny-random"
    model.eval()
    return LoadedModel(model=model, processor=processor, source="tiny-random")


def sam3_size_model() -> Sam3Model:
    """The released SAM3 architecture (``Sam3Config()`` defaults) on the meta device: no weights."""
    with torch.device("meta"):
        return Sam3Model(Sam3Config())


def load_sam3(
    name_or_path: str = "facebook/sam3",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LoadedModel:
    """Load ``Sam3Model`` + ``Sam3Processor`` from a hub id, a local folder or an alias.

    Aliases: ``tiny`` (the shipped tiny SAM3), ``tiny-random``, ``sam3-size`` (see
    :data:`MODEL_ALIASES`). Raises :class:`ModelLoadError` with the fix when weights are missing.
    """
    if name_or_path == "tiny-random":
        loaded = create_tiny_sam3()
    elif name_or_path == "sam3-size":
        return LoadedModel(model=sam3_size_model(), processor=None, source="sam3-size")
    else:
        source = _resolve_source(name_or_path)
        model = _from_pretrained(Sam3Model, source, dtype=dtype)
        processor = _from_pretrained(Sam3Processor, source)
        loaded = LoadedModel(model=model, processor=processor, source=str(source))
    loaded.model.to(device=device, dtype=dtype)
    loaded.model.eval()
    # Adapters record this as their base model: keep the name the user gave (`tiny`, a hub id).
    loaded.model.name_or_path = loaded.model.config.name_or_path = name_or_path
    return loaded


def _resolve_source(name_or_path: str) -> str:
    if name_or_path == "tiny":
        if not (TINY_SAM3_DIR / "config.json").is_file():
            raise ModelLoadError(
                f"the tiny SAM3 is not in {TINY_SAM3_DIR}; build it with "
                "`python scripts/build_tiny_sam3.py` or use `--model tiny-random`"
            )
        return str(TINY_SAM3_DIR)
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} is not a model folder: it has no config.json. Pass a folder saved with "
                "`save_pretrained` (config.json, model.safetensors, processor files) or a hub id."
            )
        return str(path)
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ModelLoadError(f"model folder {name_or_path} does not exist")
    return name_or_path


def _from_pretrained(cls: type, source: str, **kwargs: object) -> object:
    """``cls.from_pretrained``: the local cache first, then the hub only when it is reachable."""
    is_local = Path(source).exists()
    try:
        return cls.from_pretrained(source, local_files_only=not is_local or None, **kwargs)
    except OSError as error:
        if is_local or os.environ.get("HF_HUB_OFFLINE") or not _hub_reachable():
            raise ModelLoadError(_explain_load_failure(source, error)) from error
    try:
        return cls.from_pretrained(source, **kwargs)
    except OSError as error:
        raise ModelLoadError(_explain_load_failure(source, error)) from error


def _hub_reachable(timeout: float = 3.0) -> bool:
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host or "huggingface.co", 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _explain_load_failure(source: str, error: Exception) -> str:
    if Path(source).exists():
        return f"cannot load {source}: {error}"
    return (
        f"cannot load `{source}`: not in the local Hugging Face cache and the hub is not reachable "
        "or refused the download. "
        "SAM3 weights are gated: accept the licence on https://huggingface.co/facebook/sam3, run "
        "`hf auth login`, then download once with `hf download facebook/sam3` (or point "
        "`model.name_or_path` at a local folder). Offline, use `--model tiny`."
    )


def save_model_folder(model: Sam3Model, processor: Sam3Processor | None, output_dir: Path) -> Path:
    """Save a plain model folder (safetensors + config + processor files)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    if processor is not None:
        processor.save_pretrained(output_dir)
    return output_dir


def count_parameters_by_prefix(model: torch.nn.Module) -> dict[str, int]:
    """Parameter counts per top-level child module (``vision_encoder``, ``text_encoder`` ...)."""
    counts: dict[str, int] = {}
    for name, parameter in model.named_parameters():
        prefix = name.split(".", 1)[0]
        counts[prefix] = counts.get(prefix, 0) + parameter.numel()
    return counts
