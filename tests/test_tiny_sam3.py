"""The shipped tiny SAM3 (assets/tiny-sam3) is a real, if small, pretrained SAM3.

It loads through the same code path as ``facebook/sam3``, segments the named shape on fresh
plain-shape images it was not trained on, and stays silent for an absent shape (measured on
the shipped build: top-1 IoU 0.70, presence 0.96 vs 0.13, fires on 78 % of present and 0 % of
absent names at score 0.5).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import Sam3Model

from sam3_lora.config import load_config
from sam3_lora.data.synthetic import PLAIN_SHAPES, draw_shapes_image
from sam3_lora.predict.inference import SAM3LoRAInference
from sam3_lora.tasks.concept.tiny import tiny_sam3_dir

NUM_IMAGES = 30


@pytest.fixture(scope="module")
def measured() -> dict[str, float]:
    """Threshold-free top-1 IoU, presence and firing on images from an unseen seed."""
    predictor = SAM3LoRAInference(model="tiny", device="cpu", threshold=0.0)
    assert isinstance(predictor.model, Sam3Model)
    rng = np.random.default_rng(12345)  # the build used seed 0
    top1, fired_present, fired_absent, presence_present, presence_absent = [], [], [], [], []
    for _ in range(NUM_IMAGES):
        pixels, instances = draw_shapes_image(rng, "plain", 256)
        found = predictor.predict(pixels, text=list(PLAIN_SHAPES))
        for shape in PLAIN_SHAPES:
            mine = [i.mask for i in instances if i.category == shape]
            of_prompt = [k for k, label in enumerate(found["labels"]) if label == shape]
            best = max(of_prompt, key=lambda k: found["scores"][k])
            fires = any(found["scores"][k] >= 0.5 for k in of_prompt)
            if mine:
                predicted = found["masks"][best]
                top1.append(max((predicted & m).sum() / (predicted | m).sum() for m in mine))
                presence_present.append(found["presence"][shape])
                fired_present.append(fires)
            else:
                presence_absent.append(found["presence"][shape])
                fired_absent.append(fires)
    return {
        "top1_iou": float(np.mean(top1)),
        "presence_present": float(np.mean(presence_present)),
        "presence_absent": float(np.mean(presence_absent)),
        "fires_present": float(np.mean(fired_present)),
        "fires_absent": float(np.mean(fired_absent)),
    }


def test_shipped_folder_is_small_and_complete() -> None:
    files = {p.name for p in tiny_sam3_dir().iterdir()}
    assert {"config.json", "model.safetensors", "build_info.json"} <= files
    assert {"tokenizer_config.json", "processor_config.json"} <= files
    size = sum(p.stat().st_size for p in tiny_sam3_dir().iterdir())
    assert size < 15e6
    info = json.loads((tiny_sam3_dir() / "build_info.json").read_text())
    assert info["categories"] == list(PLAIN_SHAPES)


def test_segments_the_named_shape(measured: dict[str, float]) -> None:
    assert measured["top1_iou"] > 0.55, measured


def test_says_none_for_an_absent_shape(measured: dict[str, float]) -> None:
    assert measured["presence_present"] > measured["presence_absent"] + 0.6, measured
    assert measured["fires_absent"] < 0.05, measured
    assert measured["fires_present"] > 0.5, measured


def test_quickstart_uses_the_recorded_operating_point() -> None:
    """configs/quickstart.yaml thresholds at the score the build measured, not at a guess."""
    info = json.loads((tiny_sam3_dir() / "build_info.json").read_text())
    point = info["operating_point"]
    best = max(point["sweep"], key=lambda row: row["giou"])
    assert point["score_threshold"] == best["threshold"]
    assert load_config("quickstart").evaluation.score_threshold == point["score_threshold"]


@pytest.mark.parametrize("family", ["sam3", "sam2"])
def test_attention_runs_through_pytorch_sdpa(family: str) -> None:
    """The fused attention kernels (SDPA) are what loaded models use, not the eager matmuls."""
    from sam3_lora.models import load_model

    model = load_model("tiny", family).model
    assert model.config._attn_implementation == "sdpa"
    assert model.config.vision_config._attn_implementation == "sdpa"
