"""QLoRA (``model.quantization: 4bit``): a 4-bit bitsandbytes base, LoRA trained on top, the
adapter loaded onto the float base with plain PEFT. Training runs on CPU (bitsandbytes' CPU
kernels); the tests that need bitsandbytes are skipped only where it is not installed (it is in
the ``dev`` extra)."""

from __future__ import annotations

import csv
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from sam3_lora.config import ModelSettings, load_config
from sam3_lora.errors import ConfigError, ModelLoadError
from sam3_lora.models import load_model
from sam3_lora.quantization import is_4bit, weight_bytes
from sam3_lora.training import SAM3TrainerNative
from tests.conftest import tiny_training_overrides

needs_bitsandbytes = pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None,
    reason='bitsandbytes is not installed (pip install -e ".[dev]")',
)


def test_quantization_is_off_by_default_and_described() -> None:
    field = ModelSettings.model_fields["quantization"]
    assert load_config().model.quantization == "none"
    assert "4bit" in field.description and "sam3-lora[qlora]" in field.description


def test_4bit_with_full_finetuning_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"model.quantization 4bit .* finetune.mode: lora"):
        load_config(None, {"model.quantization": "4bit", "finetune.mode": "full"})


def test_missing_bitsandbytes_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # find_spec: not installed
    with pytest.raises(ConfigError, match=r'pip install "sam3-lora\[qlora\]"'):
        load_model("tiny", "sam3", quantization="4bit")


@needs_bitsandbytes
def test_a_meta_device_size_model_cannot_be_quantised() -> None:
    with pytest.raises(ModelLoadError, match="meta device"):
        load_model("sam3-size", "sam3", quantization="4bit")


@needs_bitsandbytes
def test_4bit_base_keeps_heads_in_float_and_is_smaller() -> None:
    import bitsandbytes as bnb

    quantised = load_model("tiny", "sam3", quantization="4bit").model
    full = load_model("tiny", "sam3").model
    kinds = {n: type(m) for n, m in quantised.named_modules() if isinstance(m, torch.nn.Linear)}
    assert kinds["vision_encoder.backbone.layers.0.attention.q_proj"] is bnb.nn.Linear4bit
    assert kinds["detr_decoder.layers.0.mlp.fc1"] is bnb.nn.Linear4bit
    for head in ("mask_decoder.mask_embedder.layers.0", "detr_decoder.box_head.layer1"):
        assert kinds[head] is torch.nn.Linear
    assert weight_bytes(quantised)["total"] < 0.7 * weight_bytes(full)["total"]


@needs_bitsandbytes
@pytest.mark.parametrize(
    ("family", "model", "checkpointing"),
    [("sam3", "tiny-random", False), ("sam3", "tiny-random", True), ("sam2", "tiny", False)],
    ids=["sam3", "sam3-checkpointing", "sam2"],
)
def test_qlora_trains_and_the_adapter_loads_on_the_float_base(
    family: str, model: str, checkpointing: bool, shapes_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "run"
    overrides = tiny_training_overrides(
        shapes_dir,
        output,
        **{
            "model.family": family,
            "model.name_or_path": model,
            "model.quantization": "4bit",
            "training.max_steps": 3,
            "training.gradient_checkpointing": checkpointing,
            "training.eval_steps": 100,
            "data.verify_negatives": False,
            "evaluation.retention_prompts": 0,
        },
    )
    if family != "sam3":
        overrides.pop("data.num_negative_prompts")
    trainer = SAM3TrainerNative(None, overrides)
    trainer.train()
    assert is_4bit(trainer.trainer.task.model)
    layout = trainer.trainer.layout  # sam2: the sam2_lora layout (named folders)
    with open(layout.metrics_csv) as handle:
        losses = [float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    final = layout.final_dir(3)
    saved = load_file(str(final / "adapter_model.safetensors"))
    lora_b = [t for k, t in saved.items() if "lora_B" in k]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)  # B starts at 0: it was trained
    if layout.named:  # the merge belongs on the float base: the best adapter comes alone
        bests = [path.name for _, path in layout.best_dirs()]
        assert bests and all(name.startswith("best_lora_") for name in bests), bests

    float_base = load_model(model, family).model
    adapted = PeftModel.from_pretrained(float_base, final)
    assert not is_4bit(adapted)
    state = {k.replace(".default", ""): v for k, v in adapted.state_dict().items() if "lora_" in k}
    for key, tensor in saved.items():
        assert torch.equal(state[key], tensor), key
