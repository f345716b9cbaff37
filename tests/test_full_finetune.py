"""Full fine-tuning: the finetune section, Meta's parameter groups, freezing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sam3_lora.config import load_config, validate_config
from sam3_lora.engine.optim import GroupRule, decay_groups, parameter_groups
from sam3_lora.errors import ConfigError
from sam3_lora.models import load_sam3
from sam3_lora.tasks.concept.finetune import full_group_rule, prepare_network
from sam3_lora.tasks.concept.recipe import build_concept_task
from sam3_lora.tasks.concept.tiny import sam3_size_model

REPO = Path(__file__).resolve().parents[1]
FULL_FT = "full_ft"  # the presets, as a user names them
DECODER_ONLY = "decoder_only"

# Meta's lr = base x lr_scale 0.1: transformer parts 8e-4, vision 2.5e-4, language 5e-5.
TRANSFORMER, VISION, LANGUAGE = 8e-5, 2.5e-5, 5e-6


def _lr_and_decay(groups: list[dict]) -> dict[int, tuple[str, float, float]]:
    """id(parameter) -> (group name, lr, weight decay); each parameter in exactly one group."""
    found: dict[int, tuple[str, float, float]] = {}
    for group in groups:
        for parameter in group["params"]:
            assert id(parameter) not in found, "a parameter in two groups"
            found[id(parameter)] = (group["name"], group["lr"], group["weight_decay"])
    return found


def _full_config(**extra: object):
    return load_config(
        None, {"finetune.mode": "full", "model.name_or_path": "tiny-random", **extra}
    )


def test_tiny_full_groups_follow_meta_one_parameter_per_group() -> None:
    loaded = load_sam3("tiny-random")
    task = build_concept_task(_full_config(), loaded)
    network = task.network
    assert all(p.requires_grad for p in network.parameters())
    lrs = _lr_and_decay(task.parameter_groups())
    assert len(lrs) == len(list(network.parameters()))  # every weight is trained
    named = dict(network.named_parameters())

    def lr(name: str) -> tuple[str, float, float]:
        return lrs[id(named[name])]

    vit = "vision_encoder.backbone."
    depth = 4  # the tiny ViT; block k of 4 gets 0.9^(4 - k)
    for block in range(depth):
        group, rate, decay = lr(f"{vit}layers.{block}.attention.q_proj.weight")
        assert group == f"vision_encoder.layer{block + 1}"
        assert rate == pytest.approx(VISION * 0.9 ** (depth - block)) and decay == 0.1
        group, rate, decay = lr(f"{vit}layers.{block}.mlp.fc1.bias")
        assert group == f"vision_encoder.layer{block + 1}.no_wd" and decay == 0.0
        assert rate == pytest.approx(VISION * 0.9 ** (depth - block))
    stem = VISION * 0.9 ** (depth + 1)
    assert lr(f"{vit}embeddings.patch_embeddings.projection.weight")[1:] == pytest.approx(
        (stem, 0.1)
    )
    assert lr(f"{vit}layer_norm.weight") == ("vision_encoder.layer0.no_wd", pytest.approx(stem), 0)
    assert lr(f"{vit}embeddings.position_embeddings")[1] == pytest.approx(VISION)  # override 1
    assert lr("vision_encoder.neck.fpn_layers.0.proj1.weight") == ("vision_encoder", VISION, 0.1)
    assert lr("text_encoder.text_model.encoder.layers.0.mlp.fc1.weight")[1] == LANGUAGE
    assert lr("text_projection.weight") == ("text_encoder", LANGUAGE, 0.1)
    assert lr("text_encoder.text_model.final_layer_norm.weight") == (
        "text_encoder.no_wd",
        LANGUAGE,
        0.0,
    )
    for component in ("geometry_encoder", "detr_encoder", "detr_decoder", "mask_decoder"):
        weight = next(n for n in named if n.startswith(component) and n.endswith(".weight"))
        assert lr(weight)[1] == pytest.approx(TRANSFORMER)
    assert lr("dot_product_scoring.text_proj.weight") == ("detr_decoder", TRANSFORMER, 0.1)
    assert lr("detr_decoder.layers.0.self_attn_layer_norm.weight")[2] == 0.0
    # Meta's no-decay rule is biases and nn.LayerNorm: the pixel decoder's GroupNorm decays.
    assert lr("mask_decoder.pixel_decoder.norms.0.weight")[2] == 0.1


def test_sam3_size_layer_decay_matches_meta() -> None:
    model = sam3_size_model()
    config = load_config(FULL_FT, {"model.name_or_path": "sam3-size"})
    network = prepare_network(model, config)
    groups = parameter_groups(network.named_parameters(), full_group_rule(network, config))
    lrs = _lr_and_decay(groups)
    named = dict(network.named_parameters())
    vit = "vision_encoder.backbone."
    for block, power in ((31, 1), (30, 2), (0, 32)):
        name = f"{vit}layers.{block}.mlp.fc2.weight"
        assert lrs[id(named[name])][1] == pytest.approx(VISION * 0.9**power)
    patch = lrs[id(named[f"{vit}embeddings.patch_embeddings.projection.weight"])]
    assert patch == ("vision_encoder.layer0", pytest.approx(VISION * 0.9**33), 0.1)
    assert lrs[id(named["detr_decoder.layers.5.mlp.fc1.weight"])][1] == pytest.approx(TRANSFORMER)
    names = [g["name"] for g in groups]
    assert len(names) == len(set(names))
    assert {"vision_encoder.layer32", "vision_encoder.layer0", "text_encoder"} <= set(names)
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(
        p.numel() for p in network.parameters()
    )


def test_overrides_of_rates_scale_and_decay() -> None:
    config = _full_config(
        **{
            "finetune.learning_rates": {"mask_decoder": 1e-3, "default": 2e-4},
            "finetune.lr_scale": 1.0,
            "finetune.layer_decay": 1.0,
            "finetune.weight_decay": 0.05,
        }
    )
    task = build_concept_task(config, load_sam3("tiny-random"))
    by_name = {g["name"]: g for g in task.parameter_groups()}
    assert by_name["mask_decoder"]["lr"] == 1e-3
    assert by_name["detr_decoder"]["lr"] == 2e-4
    assert by_name["vision_encoder.layer1"]["lr"] == 2.5e-4  # layer decay off
    assert by_name["vision_encoder.layer1"]["weight_decay"] == 0.05


def test_decoder_only_freezes_the_backbones() -> None:
    config = load_config(DECODER_ONLY, {"model.name_or_path": "tiny-random"})
    assert config.finetune.mode == "full"
    task = build_concept_task(config, load_sam3("tiny-random"))
    for name, parameter in task.network.named_parameters():
        frozen = name.startswith(("vision_encoder", "text_encoder", "text_projection"))
        assert parameter.requires_grad is not frozen, name
    names = {g["name"] for g in task.parameter_groups()}
    assert names and not any(n.startswith(("vision", "text")) for n in names)


def test_lora_mode_keeps_the_two_trainer_groups() -> None:
    config = load_config(
        None,
        {"model.name_or_path": "tiny-random", "training.learning_rate": 3e-4, "lora.bias": "all"},
    )
    task = build_concept_task(config, load_sam3("tiny-random"))
    trainable = [p for p in task.model.parameters() if p.requires_grad]
    groups = task.parameter_groups()
    assert [g["name"] for g in groups] == ["decay", "no_decay"]
    assert groups[0]["params"] == [p for p in trainable if p.ndim >= 2]
    assert groups[1]["params"] == [p for p in trainable if p.ndim < 2] != []
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(3e-4, 0.01), (3e-4, 0.0)]


def test_group_rule_needs_a_rate_for_every_component() -> None:
    weight = torch.nn.Parameter(torch.zeros(2, 2))
    rule = GroupRule(component_of=lambda name: name.split(".")[0], learning_rates={"a": 1.0})
    assert parameter_groups([("a.w", weight)], rule)[0]["lr"] == 1.0
    with pytest.raises(KeyError, match="no learning rate for `b`"):
        parameter_groups([("b.w", weight)], rule)
    assert decay_groups([("a.w", weight)], 1.0, 0.1)[1]["params"] == []  # both groups always


@pytest.mark.parametrize(
    ("finetune", "message"),
    [
        ({"mode": "fulll"}, "`finetune.mode` = 'fulll'"),
        (
            {"mode": "full", "freeze": ["vision"]},
            "finetune.freeze: `vision` is not a component of sam3",
        ),
        ({"freeze": ["text_encoder"]}, "finetune.freeze applies to finetune.mode full"),
        ({"learning_rates": {"decoder": 1e-4}}, "`decoder` is not a component of sam3"),
        ({"learning_rates": {"default": 0}}, "`default`: a learning rate must be > 0"),
        ({"layer_decay": 0}, "`finetune.layer_decay` = 0: Input should be greater than 0"),
        ({"lr_scale": -1}, "`finetune.lr_scale` = -1"),
        ({"lr_rate": 1}, "`finetune.lr_rate`: unknown key; did you mean `finetune.lr_scale`?"),
        (
            {
                "mode": "full",
                "freeze": [
                    "vision_encoder",
                    "text_encoder",
                    "geometry_encoder",
                    "detr_encoder",
                    "detr_decoder",
                    "mask_decoder",
                ],
            },
            "every component is frozen",
        ),
    ],
)
def test_finetune_config_errors_name_the_key(finetune: dict, message: str) -> None:
    with pytest.raises(ConfigError, match="^mine.yaml: ") as error:
        validate_config({"finetune": finetune}, "mine.yaml")
    assert message in str(error.value)


def test_shipped_full_configs() -> None:
    full = load_config(FULL_FT)
    assert (full.finetune.mode, full.finetune.lr_scale, full.finetune.layer_decay) == (
        "full",
        0.1,
        0.9,
    )
    assert full.training.max_grad_norm == 0.1 and full.training.lr_scheduler == "inverse_sqrt"
    assert (full.training.warmup_steps, full.training.cooldown_steps) == (20, 20)
    assert full.training.mixed_precision == "auto"
    decoder_only = load_config(DECODER_ONLY)
    assert decoder_only.finetune.freeze == ["vision_encoder", "text_encoder"]
