from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import Sam3Model

from sam3_lora.config import LoraSettings, load_config
from sam3_lora.errors import AdapterError, ConfigError
from sam3_lora.lora import (
    apply_lora_to_model,
    count_parameters,
    load_lora_weights,
    merge_lora_weights,
    parameter_report,
    resolve_targets,
    save_lora_weights,
)
from sam3_lora.models import load_sam3
from sam3_lora.tasks.concept.spec import COMPONENTS
from sam3_lora.tasks.concept.tiny import sam3_size_model

VISION = [f"vision_encoder.backbone.layers.{i}" for i in range(4)]


def _attn(prefixes: list[str], block: str, names: tuple[str, ...]) -> set[str]:
    return {f"{p}.{block}.{n}" for p in prefixes for n in names}


EXPECTED_MODULES = {
    "minimal": _attn(VISION, "attention", ("q_proj", "v_proj")),
    "balanced": _attn(VISION, "attention", ("q_proj", "k_proj", "v_proj"))
    | _attn(VISION, "mlp", ("fc1", "fc2"))
    | _attn(["mask_decoder"], "prompt_cross_attn", ("q_proj", "k_proj", "v_proj")),
    "maximum": _attn(VISION, "attention", ("q_proj", "k_proj", "v_proj", "o_proj"))
    | _attn(VISION, "mlp", ("fc1", "fc2"))
    | _attn(["mask_decoder"], "prompt_cross_attn", ("q_proj", "k_proj", "v_proj", "o_proj"))
    | _attn(
        [f"detr_encoder.layers.{i}" for i in range(2)],
        "self_attn",
        ("q_proj", "k_proj", "v_proj", "o_proj"),
    )
    | _attn(
        [f"detr_encoder.layers.{i}" for i in range(2)],
        "cross_attn",
        ("q_proj", "k_proj", "v_proj", "o_proj"),
    )
    | _attn([f"detr_encoder.layers.{i}" for i in range(2)], "mlp", ("fc1", "fc2"))
    | {
        f"detr_decoder.layers.{i}.{block}.{n}"
        for i in range(2)
        for block in ("self_attn", "text_cross_attn", "vision_cross_attn")
        for n in ("q_proj", "k_proj", "v_proj", "o_proj")
    }
    | _attn([f"detr_decoder.layers.{i}" for i in range(2)], "mlp", ("fc1", "fc2")),
}
QKV_FC = ("q_proj", "k_proj", "v_proj", "fc1", "fc2")
EXPECTED_MODULES["full"] = (
    EXPECTED_MODULES["balanced"]
    | {
        f"text_encoder.text_model.encoder.layers.{i}.{block}.{n}"
        for i in range(2)
        for block, names in (("self_attn", QKV_FC[:3]), ("mlp", QKV_FC[3:]))
        for n in names
    }
    | {
        f"geometry_encoder.layers.0.{block}.{n}"
        for block, names in (
            ("self_attn", QKV_FC[:3]),
            ("cross_attn", QKV_FC[:3]),
            ("mlp", QKV_FC[3:]),
        )
        for n in names
    }
    | {
        f"{part}.layers.{i}.{block}.{n}"
        for part, blocks in (
            ("detr_encoder", ("self_attn", "cross_attn")),
            ("detr_decoder", ("self_attn", "text_cross_attn", "vision_cross_attn")),
        )
        for i in range(2)
        for block in blocks
        for n in QKV_FC[:3]
    }
    | {
        f"{part}.layers.{i}.mlp.{n}"
        for part in ("detr_encoder", "detr_decoder")
        for i in range(2)
        for n in QKV_FC[3:]
    }
)


def _adapted_modules(model: PeftModel) -> set[str]:
    return {
        name.removeprefix("base_model.model.").split(".lora_A", 1)[0]
        for name, _ in model.named_parameters()
        if ".lora_A." in name
    }


@pytest.mark.parametrize("preset", ["minimal", "balanced", "full", "maximum"])
def test_preset_adapts_exactly_the_expected_modules(preset: str) -> None:
    settings = load_config(preset).lora
    model = apply_lora_to_model(load_sam3("tiny-random").model, settings)
    assert _adapted_modules(model) == EXPECTED_MODULES[preset]
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    counts = count_parameters(model)
    assert 0 < counts["percent"] < 100
    assert counts["trainable"] == sum(
        p.numel() for _, p in model.named_parameters() if p.requires_grad
    )


def test_aliases_and_all() -> None:
    base = load_sam3("tiny-random").model
    alias = resolve_targets(base, LoraSettings(target_modules=["out_proj", "linear1"]))
    assert {n.rsplit(".", 1)[-1] for n in alias.module_names} == {"o_proj", "fc1"}
    text = resolve_targets(
        base,
        LoraSettings(
            target_modules=["out_proj"],
            apply_to_vision_encoder=False,
            apply_to_text_encoder=True,
            apply_to_mask_decoder=False,
        ),
    )
    assert all(n.endswith("self_attn.out_proj") for n in text.module_names) and text.module_names
    everything = resolve_targets(base, LoraSettings(target_modules=["all"]))
    linears = {
        n
        for n, m in base.named_modules()
        if isinstance(m, torch.nn.Linear) and n.split(".")[0] in ("vision_encoder", "mask_decoder")
    }
    assert set(everything.module_names) == linears
    model = apply_lora_to_model(base, LoraSettings(target_modules=["all"]))
    assert _adapted_modules(model) == linears


def test_components_own_the_scoring_head_and_text_projection() -> None:
    """The detector's classification head belongs to ``detr_decoder`` and the projection of the
    text features into the detector to ``text_encoder``: `all` adapts them, and the parameter
    report counts them there."""
    base = load_sam3("tiny-random").model
    decoder_and_text = LoraSettings(
        target_modules=["all"],
        apply_to_vision_encoder=False,
        apply_to_mask_decoder=False,
        apply_to_text_encoder=True,
        apply_to_detr_decoder=True,
    )
    targets = resolve_targets(base, decoder_and_text).by_component()
    assert "text_projection" in targets["text_encoder"]
    assert {"dot_product_scoring.query_proj", "dot_product_scoring.text_proj"} <= set(
        targets["detr_decoder"]
    )
    model = apply_lora_to_model(base, decoder_and_text)
    assert {"text_projection", "dot_product_scoring.query_proj"} <= _adapted_modules(model)
    rows = {row.component: row for row in parameter_report(model).rows}
    assert set(rows) == set(COMPONENTS)  # no row for dot_product_scoring or text_projection
    assert rows["detr_decoder"].adapted_modules == len(targets["detr_decoder"])

    # Named targets follow the same ownership, and never reach another component's modules.
    named_settings = decoder_and_text.model_copy(
        update={"target_modules": ["query_proj", "text_projection", "q_proj"]}
    )
    named = resolve_targets(load_sam3("tiny-random").model, named_settings)
    assert "dot_product_scoring.query_proj" in named.module_names
    assert "text_projection" in named.module_names
    assert not any(n.startswith(("vision_encoder", "mask_decoder")) for n in named.module_names)
    model = apply_lora_to_model(load_sam3("tiny-random").model, named_settings)
    assert _adapted_modules(model) == set(named.module_names)


def test_selection_errors() -> None:
    base = load_sam3("tiny-random").model
    with pytest.raises(ConfigError, match="`qproj` matches no linear layer in vision_encoder"):
        resolve_targets(base, LoraSettings(target_modules=["qproj"]))
    with pytest.raises(ConfigError, match="no LoRA component selected"):
        resolve_targets(
            base, LoraSettings(apply_to_vision_encoder=False, apply_to_mask_decoder=False)
        )
    with pytest.raises(ConfigError, match="modules_to_save: `nope`"):
        apply_lora_to_model(base, LoraSettings(modules_to_save=["nope"]))
    with pytest.raises(ConfigError, match="no LoRA layer is left"):
        apply_lora_to_model(base, LoraSettings(modules_to_save=["vision_encoder", "mask_decoder"]))


def test_peft_options_pass_through() -> None:
    model = apply_lora_to_model(
        load_sam3("tiny-random").model,
        LoraSettings(use_rslora=True, use_dora=True, modules_to_save=["dot_product_scoring"]),
    )
    config = model.peft_config["default"]
    assert config.use_rslora and config.use_dora
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("dot_product_scoring" in n and "modules_to_save" in n for n in trainable)
    assert any("lora_magnitude_vector" in n for n in trainable)


def test_fresh_adapter_leaves_outputs_unchanged(tiny_inputs: dict) -> None:
    base = load_sam3("tiny-random").model
    with torch.no_grad():
        reference = base(**tiny_inputs)
    model = apply_lora_to_model(base, load_config("full").lora).eval()
    with torch.no_grad():
        adapted = model(**tiny_inputs)
    for key in ("pred_masks", "pred_boxes", "pred_logits", "presence_logits"):
        torch.testing.assert_close(adapted[key], reference[key], rtol=0, atol=0)


def _train_one_step(model: PeftModel, inputs: dict) -> None:
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    outputs = model(**inputs)
    loss = outputs.pred_masks.sigmoid().mean() + outputs.pred_logits.mean()
    loss = loss + outputs.presence_logits.mean() + outputs.pred_boxes.mean()
    loss.backward()
    optimizer.step()
    model.eval()


def test_one_step_changes_only_adapter_weights(tiny_inputs: dict) -> None:
    model = apply_lora_to_model(load_sam3("tiny-random").model, load_config("maximum").lora)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train_one_step(model, tiny_inputs)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "the step changed nothing"
    assert all(".lora_" in n for n in changed)
    assert any(".lora_B." in n for n in changed)


def test_save_load_bitwise_and_merge_equivalence(tmp_path: Path, tiny_inputs: dict) -> None:
    model = apply_lora_to_model(load_sam3("tiny-random").model, load_config("balanced").lora)
    _train_one_step(model, tiny_inputs)
    adapter_dir = save_lora_weights(model, tmp_path / "adapter")
    assert (adapter_dir / "adapter_config.json").is_file()
    saved = load_file(adapter_dir / "adapter_model.safetensors")

    plain = PeftModel.from_pretrained(
        load_sam3("tiny-random").model, adapter_dir
    )  # the ecosystem's way
    reloaded = load_lora_weights(load_sam3("tiny-random").model, adapter_dir)
    for loaded in (plain, reloaded):
        state = {k: v for k, v in loaded.state_dict().items() if ".lora_" in k}
        assert len(state) == len(saved)
        for key, value in saved.items():
            module_key = key.replace(".lora_A.weight", ".lora_A.default.weight").replace(
                ".lora_B.weight", ".lora_B.default.weight"
            )
            assert torch.equal(state[module_key], value), key

    with torch.no_grad():
        adapted = reloaded(**tiny_inputs)
    merged = merge_lora_weights(reloaded)
    assert isinstance(merged, Sam3Model)
    merged.save_pretrained(tmp_path / "merged")
    plain_merged = Sam3Model.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        merged_outputs = plain_merged(**tiny_inputs)
    for key in ("pred_masks", "pred_boxes", "pred_logits", "presence_logits"):
        torch.testing.assert_close(merged_outputs[key], adapted[key], rtol=0, atol=1e-4)
    assert not torch.equal(
        plain_merged.vision_encoder.backbone.layers[0].attention.q_proj.weight,
        load_sam3("tiny-random").model.vision_encoder.backbone.layers[0].attention.q_proj.weight,
    )


def test_load_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="adapter_config.json not found"):
        load_lora_weights(load_sam3("tiny-random").model, tmp_path / "nothing")
    model = apply_lora_to_model(load_sam3("tiny-random").model, load_config("balanced").lora)
    adapter_dir = save_lora_weights(model, tmp_path / "adapter")

    other_base = sam3_size_model().to_empty(device="cpu")
    with pytest.raises(AdapterError, match="trained for another base model"):
        load_lora_weights(other_base, adapter_dir)

    weights = load_file(adapter_dir / "adapter_model.safetensors")
    dropped = next(iter(weights))
    from safetensors.torch import save_file

    save_file(
        {k: v for k, v in weights.items() if k != dropped},
        adapter_dir / "adapter_model.safetensors",
    )
    with pytest.raises(AdapterError, match="missing"):
        load_lora_weights(load_sam3("tiny-random").model, adapter_dir)

    (adapter_dir / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match="not valid JSON"):
        load_lora_weights(load_sam3("tiny-random").model, adapter_dir)
    json.loads("{}")


def test_parameter_report_on_released_architecture() -> None:
    report = parameter_report(apply_lora_to_model(sam3_size_model(), load_config("balanced").lora))
    assert report.total == 840_376_374
    assert 8.5e6 < report.trainable < 9.5e6
    assert 1.0 < report.percent < 1.2
    minimal = parameter_report(apply_lora_to_model(sam3_size_model(), load_config("minimal").lora))
    assert minimal.trainable == 32 * 2 * (1024 * 4 * 2)


@pytest.mark.parametrize("targets", [["all"], ["text_projection", "q_proj"]])
def test_every_adapted_layer_trains(shapes_dir: Path, targets: list[str]) -> None:
    # LoRA never lands on a layer the forward skips (CLIP's own text_projection): it would not
    # train, and DistributedDataParallel refuses parameters without gradients.
    from sam3_lora.data.coco import CocoDataset
    from sam3_lora.data.transforms import build_transforms
    from sam3_lora.tasks.concept.loss import Sam3ConceptLoss
    from sam3_lora.tasks.concept.module import ConceptModel
    from sam3_lora.tasks.concept.samples import ConceptDataset, collate_concept_samples
    from sam3_lora.tasks.concept.spec import PIXEL_MEAN, PIXEL_STD
    from sam3_lora.tasks.concept.task import ConceptTask

    flags = {f"apply_to_{name}": name != "geometry_encoder" for name in COMPONENTS}
    settings = LoraSettings(rank=2, dropout=0.0, target_modules=targets, **flags)
    loaded = load_sam3("tiny-random")
    model = apply_lora_to_model(loaded.model, settings)
    task = ConceptTask(ConceptModel(model, loaded.processor.tokenizer), Sam3ConceptLoss())
    transform = build_transforms(224, train=False, pixel_mean=PIXEL_MEAN, pixel_std=PIXEL_STD)
    dataset = ConceptDataset(CocoDataset.from_split_dir(shapes_dir / "train"), transform, True)
    batch = collate_concept_samples([dataset[0]])
    task.loss(task.model(batch), batch)["loss"].backward()
    adapted = [(n, p) for n, p in model.named_parameters() if "lora_" in n]
    assert adapted
    assert [n for n, p in adapted if p.grad is None] == []
    assert not any("text_encoder.text_projection" in n for n, _ in adapted)
