"""``lora-info --memory``: the arithmetic, the fake-tensor activation count against real runs of
the tiny models, the CLI report and its suggestions, and the out-of-memory advice."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from sam3_lora.cli import main
from sam3_lora.config import load_config
from sam3_lora.memory.build import memory_model
from sam3_lora.memory.estimate import (
    QLORA_BYTES_PER_WEIGHT,
    MemorySettings,
    static_bytes,
)
from sam3_lora.memory.report import oom_advice, parse_gpu_memory, suggestions
from sam3_lora.models import load_model

GIB = 1024**3


def _toy() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(10, 20), torch.nn.LayerNorm(20), torch.nn.Linear(20, 5)
    )


def test_static_bytes_of_lora_and_full_models_are_known_answers() -> None:
    base = 10 * 20 + 20 + 2 * 20 + 20 * 5 + 5  # 365 parameters
    lora = get_peft_model(_toy(), LoraConfig(r=2, target_modules=["0", "2"]))
    adapters = 2 * (10 + 20) + 2 * (20 + 5)  # A: r x in, B: out x r
    counted = static_bytes(lora)
    assert counted.trainable_parameters == adapters
    assert counted.weights == 4 * (base + adapters)
    assert (counted.gradients, counted.optimizer) == (4 * adapters, 8 * adapters)
    full = static_bytes(_toy())
    assert (full.weights, full.gradients, full.optimizer) == (4 * base, 4 * base, 8 * base)
    quantized = static_bytes(lora, qlora=True)
    frozen_linear = 10 * 20 + 20 * 5
    assert quantized.weights == int(
        4 * (base + adapters - frozen_linear) + QLORA_BYTES_PER_WEIGHT * frozen_linear
    )
    in_bf16 = static_bytes(lora, frozen_dtype=torch.bfloat16)
    frozen_linear_with_bias = frozen_linear + 20 + 5
    assert in_bf16.weights == 4 * (base + adapters - frozen_linear_with_bias) + 2 * (
        frozen_linear_with_bias
    )
    assert static_bytes(lora, qlora=True, frozen_dtype=torch.bfloat16) == quantized


class _Measured:
    """Bytes autograd saves in a real CPU run (data pointers, parameters excluded)."""

    def __init__(self, parameters: object) -> None:
        self.parameters = {p.untyped_storage().data_ptr() for p in parameters}
        self.sizes: dict[int, int] = {}

    def keep(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.parameters:
            self.sizes.setdefault(storage.data_ptr(), storage.nbytes())
        return tensor

    def run(self, step: object) -> int:
        hooks = torch.autograd.graph.saved_tensors_hooks(self.keep, lambda t: t)
        with torch.autocast("cpu", dtype=torch.bfloat16), hooks:
            outputs = step()
        for tensor in outputs:
            self.keep(tensor)
        return sum(self.sizes.values())


def _predicted(config: object, images: int, prompts: int, checkpointing: bool = False) -> float:
    """Activations + weight copies predicted for a run on this CPU (``target="cpu"``: its
    autocast and dropout, not the emulated CUDA ones)."""
    model, _ = memory_model(config, target="cpu")
    estimate = model.estimate(MemorySettings(images, prompts, "bf16", checkpointing))
    return estimate.activations + estimate.weight_copies


def test_sam3_tiny_activations_match_a_real_training_step() -> None:
    from sam3_lora.frozen_weights import cast_frozen_weights, frozen_weights_dtype
    from sam3_lora.tasks.concept.loss import PromptTarget
    from sam3_lora.tasks.concept.memory import OBJECTS_PER_PROMPT
    from sam3_lora.tasks.concept.recipe import build_concept_task
    from sam3_lora.tasks.concept.samples import ConceptBatch

    config = load_config("balanced", {"model.name_or_path": "tiny"})
    loaded = load_model("tiny", "sam3")
    task = build_concept_task(config, loaded)
    cast_frozen_weights(task.network, frozen_weights_dtype(config, "bf16"))  # as bf16 training
    task.model.train()
    images, prompts, size = 2, 3, int(loaded.model.config.vision_config.image_size)
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]])[:OBJECTS_PER_PROMPT]
    masks = torch.zeros(len(boxes), size, size, dtype=torch.bool)
    masks[:, 40:90, 40:90] = True
    batch = ConceptBatch(
        pixel_values=torch.randn(images, 3, size, size),
        prompt_image_index=torch.arange(images).repeat_interleave(prompts),
        prompts=["circle", "square", "star"] * images,
        prompt_category_ids=[0] * images * prompts,
        target_boxes=[boxes] * images * prompts,
        target_masks=[masks] * images * prompts,
        image_indices=list(range(images)),
    )

    def step() -> list[torch.Tensor]:
        outputs = task.model(batch)
        targets = [
            PromptTarget(b, m) for b, m in zip(batch.target_boxes, batch.target_masks, strict=True)
        ]
        task.criterion(outputs, targets)
        return [v for v in vars(outputs).values() if isinstance(v, torch.Tensor)]

    measured = _Measured(task.model.parameters()).run(step)
    predicted = _predicted(config, images, prompts)
    assert predicted == pytest.approx(measured, rel=0.15), (predicted, measured)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 weights
        assert type(task.model(batch).masks) is torch.Tensor  # no fake tensor leaks into it


@pytest.mark.parametrize("checkpointing", [False, True])
def test_sam2_tiny_activations_match_a_real_training_step(checkpointing: bool) -> None:
    from sam3_lora.frozen_weights import cast_frozen_weights, frozen_weights_dtype
    from sam3_lora.tasks.promptable.recipe import build_promptable_task
    from sam3_lora.tasks.promptable.samples import PromptBatch

    overrides = {
        "model.name_or_path": "tiny",
        "loss.box_probability": 0.0,
        "loss.correction_rounds": 1,
        "training.gradient_checkpointing": checkpointing,
    }
    config = load_config("sam2_lora", overrides)
    loaded = load_model("tiny", "sam2")
    task = build_promptable_task(config, loaded)
    cast_frozen_weights(task.network, frozen_weights_dtype(config, "bf16"))  # as bf16 training
    task.model.train()
    images, objects = 2, 2
    size = int(loaded.model.config.vision_config.backbone_config.image_size[0])
    masks = torch.zeros(images * objects, size, size, dtype=torch.bool)
    for k in range(images * objects):
        masks[k, 10 + 5 * k : 40 + 5 * k, 20:50] = True
    batch = PromptBatch(
        pixel_values=torch.randn(images, 3, size, size),
        object_image_index=torch.arange(images).repeat_interleave(objects),
        target_masks=masks,
        target_boxes=torch.tensor([[20.0, 10, 50, 40]]).repeat(images * objects, 1),
        category_ids=torch.zeros(images * objects, dtype=torch.long),
        annotation_ids=torch.arange(images * objects),
        image_indices=list(range(images)),
        original_sizes=[(size, size)] * images,
    )

    def step() -> list[torch.Tensor]:
        outputs = task.model(batch)
        task.loss(outputs, batch)
        return [p.mask_logits for s in outputs.steps for p in s]

    measured = _Measured(task.model.parameters()).run(step)
    predicted = _predicted(config, images, objects, checkpointing)
    assert predicted == pytest.approx(measured, rel=0.15), (predicted, measured)


def test_lora_info_memory_on_the_tiny_model(capsys: pytest.CaptureFixture) -> None:
    assert main(["lora-info", "--config", "balanced", "--model", "tiny", "--memory"]) == 0
    out = capsys.readouterr().out
    assert "Peak training memory of tiny" in out and "checkpointing on" in out
    assert "predicted peak" in out and "--gpu_memory" in out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_lora_info_memory_on_the_released_sam3_without_weights(
    capsys: pytest.CaptureFixture,
) -> None:
    argv = ["lora-info", "--config", "balanced", "--model", "facebook/sam3", "--memory"]
    argv += ["--resolution", "336", "--prompts_per_image", "2", "--gpu_memory", "80GB"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "facebook/sam3 (sam3-size)" in out and "336 px" in out
    assert "fits in 80.00 GiB" in out and "does not fit" not in out
    weights = next(line for line in out.splitlines() if line.startswith("│ weights"))
    assert "1.7" in weights  # 840 M parameters, the frozen linear / conv ones in bf16: 1.70 GiB


def test_suggestions_fit_and_come_smallest_change_first() -> None:
    config = load_config("balanced", {"model.name_or_path": "tiny"})
    model, _ = memory_model(config)
    settings = MemorySettings(batch_size=2, prompts_per_image=8)
    budget = int(model.estimate(settings).total * 0.6)
    found = suggestions(model, settings, budget, lora=True)
    assert found
    assert all(s.estimate.total <= budget for s in found)
    changes = [s.change.count(",") for s in found]
    assert changes == sorted(changes) and changes[0] == 0


def test_lora_info_prints_suggestions_when_the_gpu_is_too_small(
    capsys: pytest.CaptureFixture,
) -> None:
    argv = ["lora-info", "--config", "balanced", "--model", "tiny", "--memory"]
    assert main([*argv, "--batch_size", "2", "--gpu_memory", "100MB"]) == 0
    out = capsys.readouterr().out
    assert "does not fit in 100 MiB" in out and "to fit in 100 MiB, set" in out
    assert "max_prompts_per_image:" in out


@pytest.mark.parametrize("text", ["16XB", "0GB", "lots"])
def test_a_bad_gpu_memory_is_one_clear_error(text: str, capsys: pytest.CaptureFixture) -> None:
    argv = ["lora-info", "--config", "balanced", "--model", "tiny", "--memory"]
    assert main([*argv, "--gpu_memory", text]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--gpu_memory 16GB" in err


def test_gpu_memory_units() -> None:
    assert parse_gpu_memory("16GB") == parse_gpu_memory("16 GiB") == 16 * GIB
    assert parse_gpu_memory("512MB") == 512 * 1024**2


def test_out_of_memory_advice_names_the_estimate_and_the_settings() -> None:
    config = load_config("balanced", {"model.name_or_path": "tiny", "training.batch_size": 2})
    advice = oom_advice(config, gpu_memory=100 * 1024**2)
    assert advice.startswith("predicted peak") and "batch 2" in advice
    assert "to fit in 100 MiB" in advice and "\n" not in advice
    assert "lora-info" in oom_advice(config.model_copy(update={"model": None}))


def test_hub_ids_map_to_their_architectures_without_a_download() -> None:
    from sam3_lora.memory.build import architecture
    from sam3_lora.tasks import get_spec

    model, source = architecture("facebook/sam2.1-hiera-large", get_spec("sam2"))
    assert source == "facebook/sam2.1-hiera-large (sam2.1-large-size)"
    assert next(model.parameters()).is_meta
    assert model.config.vision_config.backbone_config.hidden_size == 144  # Hiera-L
    tracker, _ = architecture("facebook/sam3", get_spec("sam3_tracker"))
    assert type(tracker).__name__ == "Sam3TrackerModel"


def test_an_unknown_model_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from sam3_lora.errors import ModelLoadError
    from sam3_lora.memory.build import architecture
    from sam3_lora.tasks import get_spec

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="cannot estimate `someone/no-such-sam3`.*sam3-size"):
        architecture("someone/no-such-sam3", get_spec("sam3"))


def test_bf16_frozen_weights_are_counted_as_training_stores_them() -> None:
    bf16 = MemorySettings(1, 2, "bf16")
    stored, _ = memory_model(load_config("balanced", {"model.name_or_path": "tiny"}))
    masters, _ = memory_model(
        load_config(
            "balanced", {"model.name_or_path": "tiny", "model.frozen_weights_dtype": "float32"}
        )
    )
    cast, fp32 = stored.estimate(bf16), masters.estimate(bf16)
    assert cast.weights < 0.7 * fp32.weights
    assert cast.weight_copies < 0.2 * fp32.weight_copies
    assert stored.estimate(MemorySettings(1, 2, "fp32")).weights == fp32.weights


def test_the_feature_cache_size_per_image_is_what_the_cache_keeps(
    capsys: pytest.CaptureFixture,
) -> None:
    from sam3_lora.memory.probe import Precision
    from sam3_lora.tasks.concept.feature_cache import VisionFeatureCache

    overrides = {"model.name_or_path": "tiny", "lora.apply_to_vision_encoder": False}
    overrides["lora.target_modules"] = ["q_proj", "k_proj", "v_proj"]
    config = load_config("balanced", overrides)
    model, _ = memory_model(config, target="cpu")
    predicted = model.probe.feature_cache_bytes_per_image(Precision(torch.bfloat16, "cpu"))
    loaded = load_model("tiny", "sam3")
    size = int(loaded.model.config.vision_config.image_size)
    cache = VisionFeatureCache()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        cache.features([0], torch.zeros(1, 3, size, size), loaded.model.get_vision_features)
    positions = sum(t.numel() * t.element_size() for t in cache._positions)
    assert predicted == cache.nbytes() - positions > 0
    argv = ["lora-info", "--config", "balanced", "--memory", "--model", "tiny"]
    argv += ["--set", "training.cache_vision_features=true", "--set", "data.augment=false"]
    argv += ["--set", "lora.apply_to_vision_encoder=false"]
    argv += ["--set", "lora.target_modules=[q_proj,k_proj,v_proj]"]
    assert main(argv) == 0
    assert "MiB per training image in host memory" in capsys.readouterr().out
