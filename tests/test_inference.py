"""SAM3LoRAInference on the tiny random SAM3 with a random LoRA adapter (no mocks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from sam3_lora.errors import AdapterError
from sam3_lora.predict.inference import PromptError, SAM3LoRAInference, build_prompts, mask_nms
from sam3_lora.predict.weights import recorded_base_model
from tests.adapters import make_tiny_adapter


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_adapter(tmp_path_factory.mktemp("adapter") / "final")


@pytest.fixture(scope="module")
def inferencer(adapter_dir: Path) -> SAM3LoRAInference:
    return SAM3LoRAInference(weights_path=adapter_dir, device="cpu", threshold=0.0)


@pytest.fixture
def image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (90, 130, 3), dtype=np.uint8))


def test_predict_returns_documented_types_and_shapes(
    inferencer: SAM3LoRAInference, image: Image.Image
) -> None:
    predictions = inferencer.predict(image, text=["circle", "star"])
    count = len(predictions["scores"])
    assert count == 2 * 20  # threshold 0: every query of both prompts
    assert predictions["boxes"].dtype == np.float32 and predictions["boxes"].shape == (count, 4)
    assert predictions["masks"].dtype == bool and predictions["masks"].shape == (count, 90, 130)
    assert np.all(np.diff(predictions["scores"]) <= 0)  # best first
    assert set(predictions["labels"]) == {"circle", "star"}
    assert predictions["image_size"] == (130, 90)
    assert np.all(predictions["boxes"][:, 2] <= 130) and np.all(predictions["boxes"][:, 3] <= 90)
    assert inferencer.has_adapter


def test_prompts_share_vision_features_and_match_single_prompts(
    inferencer: SAM3LoRAInference, image: Image.Image
) -> None:
    calls = []
    vision = inferencer.model.get_base_model().vision_encoder
    handle = vision.register_forward_hook(lambda *_: calls.append(1))
    try:
        joint = inferencer.predict_prompts(
            [image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)],
            [build_prompts(["circle", "star", "square"])] * 2,
        )
    finally:
        handle.remove()
    assert len(calls) == 1  # one vision pass for 2 images x 3 prompts
    alone = inferencer.predict(image, text="star")
    np.testing.assert_allclose(joint[0][1].scores, alone["scores"], atol=1e-5)
    np.testing.assert_allclose(joint[0][1].boxes, alone["boxes"], atol=1e-3)


def test_box_prompts_alone_and_with_text(inferencer: SAM3LoRAInference, image: Image.Image) -> None:
    boxes_only = inferencer.predict(
        image, boxes=[[10, 10, 60, 50]], negative_boxes=[[70, 5, 120, 40]]
    )
    assert set(boxes_only["labels"]) == {"object"}
    both = inferencer.predict(image, text="circle", boxes=[[10, 10, 60, 50]])
    text_only = inferencer.predict(image, text="circle")
    assert set(both["labels"]) == {"circle"}
    assert not np.allclose(both["scores"], text_only["scores"])  # the exemplar is used


@pytest.mark.parametrize(
    ("texts", "boxes", "message"),
    [
        (["  "], None, "is empty"),
        (None, None, "no prompt"),
        (["circle"], [[10, 10, 5, 50]], "is empty: need x2 > x1"),
        (["circle"], [[1, 2, 3]], "is not [x1, y1, x2, y2]"),
    ],
)
def test_bad_prompts_are_named(texts: list | None, boxes: list | None, message: str) -> None:
    with pytest.raises(PromptError, match=message.replace("[", r"\[")):
        build_prompts(texts, boxes)


def test_weights_file_and_visualization(
    adapter_dir: Path, image: Image.Image, tmp_path: Path
) -> None:
    inferencer = SAM3LoRAInference(weights_path=adapter_dir / "adapter_model.safetensors")
    predictions = inferencer.predict(image, text="circle", threshold=0.0)
    path = inferencer.visualize_predictions(predictions, tmp_path / "out.png", 0.0)
    assert Image.open(path).size == (130, 90)


def test_adapter_errors_name_the_problem(adapter_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="do not exist"):
        SAM3LoRAInference(weights_path=tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AdapterError, match="neither an adapter"):
        SAM3LoRAInference(weights_path=empty)
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "adapter_config.json").write_text(
        (adapter_dir / "adapter_config.json").read_text()
    )
    with pytest.raises(AdapterError, match=r"adapter_model\.safetensors not found"):
        SAM3LoRAInference(weights_path=no_weights)

    # An adapter of another architecture: one module's input size differs.
    other = tmp_path / "other"
    other.mkdir()
    (other / "adapter_config.json").write_text((adapter_dir / "adapter_config.json").read_text())
    state = load_file(str(adapter_dir / "adapter_model.safetensors"))
    key = next(k for k in state if "vision_encoder" in k and "lora_A" in k)
    state[key] = torch.zeros(state[key].shape[0], 7)
    save_file(state, str(other / "adapter_model.safetensors"))
    module = key.removeprefix("base_model.model.").split(".lora_A")[0]
    with pytest.raises(AdapterError, match=rf"trained for another base model.*{module}"):
        SAM3LoRAInference(weights_path=other)


def test_base_model_comes_from_the_run_config(tmp_path: Path) -> None:
    adapter = make_tiny_adapter(tmp_path / "run" / "final", record_base=False)
    with pytest.raises(AdapterError, match="does not record its base model"):
        SAM3LoRAInference(weights_path=adapter)
    (tmp_path / "run" / "config.yaml").write_text("model:\n  name_or_path: tiny-random\n")
    assert recorded_base_model(adapter) == "tiny-random"
    assert SAM3LoRAInference(weights_path=adapter).loaded.base_source == "tiny-random"
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"


def test_public_api_is_lazy() -> None:
    import sam3_lora

    assert sam3_lora.SAM3LoRAInference is SAM3LoRAInference
    for name in (
        "LoRAConfig",
        "apply_lora_to_model",
        "count_parameters",
        "save_lora_weights",
        "load_lora_weights",
        "merge_lora_weights",
        "SAM3TrainerNative",
        "load_config",
    ):
        assert getattr(sam3_lora, name) is not None


def test_mask_nms_keeps_the_best_of_overlapping_masks() -> None:
    masks = torch.zeros(4, 10, 10, dtype=torch.bool)
    masks[0, 0:6, 0:6] = True  # best score
    masks[1, 0:6, 1:7] = True  # IoU with 0: 30 / 42 = 0.71
    masks[2, 5:10, 5:10] = True  # IoU with 0: 1 / 60
    masks[3, 0:6, 3:9] = True  # IoU with 0: 18 / 54 = 0.33; with 1: 24 / 48 = 0.5
    assert mask_nms(masks, 0.5).tolist() == [0, 2, 3]  # 3 is compared with kept masks only
    assert mask_nms(masks, 0.3).tolist() == [0, 2]
    assert mask_nms(masks, 1.0).tolist() == [0, 1, 2, 3]
    assert mask_nms(masks[:0], 0.5).tolist() == []


def test_nms_removes_duplicate_detections(adapter_dir: Path, image: Image.Image) -> None:
    """Same model and prompts: NMS only removes detections, keeping the best of each overlap."""
    plain = SAM3LoRAInference(weights_path=adapter_dir, device="cpu", threshold=0.0)
    with_nms = SAM3LoRAInference(
        weights_path=adapter_dir, device="cpu", threshold=0.0, nms_iou_threshold=0.5
    )
    before = plain.predict(image, text="circle")
    after = with_nms.predict(image, text="circle")
    assert 0 < len(after["scores"]) < len(before["scores"])
    assert after["scores"][0] == before["scores"][0]
    assert set(after["scores"].tolist()) <= set(before["scores"].tolist())


def test_adapter_switched_off_and_merged_in_memory(adapter_dir: Path, image: Image.Image) -> None:
    base = SAM3LoRAInference(model="tiny-random", device="cpu", threshold=0.0)
    assert not base.has_adapter and not base.merge_adapter()
    expected_base = base.predict(image, text="circle")
    tuned = SAM3LoRAInference(weights_path=adapter_dir, device="cpu", threshold=0.0)
    expected = tuned.predict(image, text="circle")
    with tuned.adapter_disabled():
        off = tuned.predict(image, text="circle")
    np.testing.assert_allclose(off["scores"], expected_base["scores"], atol=1e-5)
    assert np.abs(expected["scores"] - expected_base["scores"]).max() > 1e-4  # it matters
    assert tuned.merge_adapter() and not tuned.has_adapter
    merged = tuned.predict(image, text="circle")
    np.testing.assert_allclose(merged["scores"], expected["scores"], atol=1e-4)
    assert (merged["masks"] == expected["masks"]).mean() > 0.999
