"""Shared fixtures: tiny SAM3 models of the released classes (never mocks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sam3_lora.models import LoadedModel, create_tiny_sam3

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def tiny_sam3() -> LoadedModel:
    """A fresh randomly initialised tiny SAM3 with its processor."""
    return create_tiny_sam3(seed=0)


@pytest.fixture
def tiny_inputs(tiny_sam3: LoadedModel) -> dict[str, torch.Tensor]:
    """Processor outputs for one random image and two text prompts."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    inputs = tiny_sam3.processor(
        images=[image, image], text=["circle", "star"], return_tensors="pt"
    )
    return {k: v for k, v in inputs.items() if k in ("pixel_values", "input_ids", "attention_mask")}
