"""SAM2 / SAM3-tracker as families of the package: registry, loading, config, LoRA, lora-info."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import Sam2Model, Sam3TrackerModel

from sam3_lora.cli import main
from sam3_lora.config import LoraSettings, load_config, validate_config
from sam3_lora.errors import ConfigError, ModelLoadError
from sam3_lora.lora import apply_lora_to_model, resolve_targets
from sam3_lora.models import load_model
from sam3_lora.tasks import family_for_name, get_spec, spec_for_model
from sam3_lora.tasks.promptable.spec import SIZE_MODELS, lora_target_modules
from sam3_lora.tasks.promptable.tiny import create_tiny_sam2

REPO = Path(__file__).resolve().parents[1]
SAM2_LORA = REPO / "configs" / "sam2_lora.yaml"


@pytest.mark.parametrize(
    ("family", "model_class"), [("sam2", Sam2Model), ("sam3_tracker", Sam3TrackerModel)]
)
def test_families_are_registered_and_load_their_aliases(family: str, model_class: type) -> None:
    spec = get_spec(family)
    assert (spec.family, spec.task, spec.model_class) == (family, "promptable", model_class)
    assert set(spec.components) == {"image_encoder", "prompt_encoder", "mask_decoder"}
    loaded = load_model("tiny-random", family)
    assert type(loaded.model) is model_class and loaded.spec is spec
    assert spec_for_model(apply_lora_to_model(loaded.model, LoraSettings())) is spec
    size = next(name for name in spec.aliases if name.endswith("-size"))
    assert load_model(size, family).model.device.type == "meta"


def test_names_pick_their_family() -> None:
    assert family_for_name("sam2.1-large-size") == "sam2"
    assert family_for_name("facebook/sam2.1-hiera-small") == "sam2"
    assert family_for_name("sam3-tracker-size") == "sam3_tracker"
    assert family_for_name("sam3-size") == "sam3"
    assert family_for_name("tiny") is None  # SAM3's and SAM2's: the config decides


def test_a_folder_of_another_family_is_refused(tmp_path: Path) -> None:
    loaded = create_tiny_sam2()
    loaded.model.save_pretrained(tmp_path)
    loaded.processor.save_pretrained(tmp_path)
    assert type(load_model(str(tmp_path), "sam2").model) is Sam2Model
    with pytest.raises(ModelLoadError, match="holds a `sam2` model.*model.family: sam2"):
        load_model(str(tmp_path), "sam3")


def test_family_fills_loss_targets_and_model() -> None:
    config = validate_config({"model": {"family": "sam2"}})
    assert config.loss.type == "promptable" and config.loss.focal_weight == 20.0
    assert config.model.name_or_path == "facebook/sam2.1-hiera-large"
    assert config.lora.target_modules["image_encoder"] == ["attn.qkv", "attn.proj"]
    assert config.lora.components(get_spec("sam2").components) == ["image_encoder", "mask_decoder"]
    again = validate_config(__import__("yaml").safe_load(config.to_yaml()))
    assert again == config
    sam3 = validate_config({})
    assert sam3.loss.type == "concept" and "apply_to_image_encoder" not in sam3.to_yaml()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"lora": {"apply_to_vision_encoder": False}},
            "lora.apply_to_vision_encoder: `vision_encoder` is not a component of sam2; its "
            "flags are apply_to_image_encoder, apply_to_prompt_encoder, apply_to_mask_decoder",
        ),
        ({"loss": {"focal_wieght": 3}}, "`loss.focal_wieght`: unknown key; did you mean "),
        ({"loss": {"type": "concept"}}, "loss.type `concept` is not the loss of model.family"),
        ({"loss": {"box_probability": 2}}, "`loss.box_probability` = 2: Input should be"),
        ({"lora": {"target_modules": {"vision": ["qkv"]}}}, "`vision` is not a component"),
    ],
)
def test_promptable_config_errors(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        validate_config({"model": {"family": "sam2"}, **raw}, "mine.yaml")
    assert message in str(error.value)


def test_sam2_lora_config_is_the_documented_recipe() -> None:
    config = load_config(SAM2_LORA)
    assert (config.model.family, config.lora.rank, config.lora.alpha) == ("sam2", 8, 16)
    assert config.lora.dropout == 0.05
    assert config.lora.components(get_spec("sam2").components) == ["image_encoder", "mask_decoder"]
    training = config.training
    assert (training.learning_rate, training.weight_decay, training.max_grad_norm) == (
        1e-3,
        0.01,
        1.0,
    )
    assert (training.lr_scheduler, training.logging_steps, training.eval_steps) == (
        "cosine",
        100,
        500,
    )
    assert (training.patience, training.min_delta, training.seed) == (7, 1e-4, 42)
    assert training.warmup_steps > 0 and training.metric_for_best == "val/miou"
    assert config.lora.target_modules == {
        "image_encoder": ["attn.qkv", "attn.proj"],
        "mask_decoder": ["q_proj", "k_proj", "v_proj", "o_proj", "mlp.proj_in", "mlp.proj_out"],
    }
    tracker = load_config(SAM2_LORA, {"model.family": "sam3_tracker"})
    assert tracker.lora.target_modules["image_encoder"][0] == "attention.q_proj"
    assert load_config(SAM2_LORA, {"lora.rank": 4}).lora.rank == 4


@pytest.mark.parametrize("family", ["sam2", "sam3_tracker"])
def test_default_targets_are_the_specs(family: str) -> None:
    loaded = load_model("tiny-random", family)
    targets = resolve_targets(loaded.model, validate_config({"model": {"family": family}}).lora)
    assert list(targets.module_names) == lora_target_modules(loaded.model)
    assert not any(name.endswith("blocks.1.proj") for name in targets.module_names)


def test_lora_target_errors_name_the_fix() -> None:
    model = create_tiny_sam2().model
    with pytest.raises(ConfigError, match="`prompt_encoder` has no linear layer.*modules_to_save"):
        resolve_targets(model, LoraSettings(apply_to_prompt_encoder=True))
    with pytest.raises(ConfigError, match="names no layers for `mask_decoder`"):
        resolve_targets(model, LoraSettings(target_modules={"image_encoder": ["attn.qkv"]}))
    with pytest.raises(ConfigError, match="`attn.qkvv` matches no linear layer in image_encoder"):
        resolve_targets(
            model,
            LoraSettings(
                target_modules={"image_encoder": ["attn.qkvv"]}, apply_to_mask_decoder=False
            ),
        )
    flat = resolve_targets(model, LoraSettings(target_modules=["attn.qkv", "q_proj"]))
    assert flat.module_names and all(n.endswith(("attn.qkv", "q_proj")) for n in flat.module_names)


#: ``Sam2Model`` / ``Sam3TrackerModel`` parameters of the released sizes (docs/sam2.md).
SIZE_PARAMETERS = {
    "sam2.1-tiny-size": "31,440,721",
    "sam2.1-small-size": "38,538,577",
    "sam2.1-base-plus-size": "73,328,401",
    "sam2.1-large-size": "216,924,865",
    "sam3-tracker-size": "458,260,369",
}


@pytest.mark.parametrize("name", list(SIZE_MODELS))
def test_lora_info_on_the_released_sizes(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    family = ["--family", "sam3_tracker"] if name == "sam3-tracker-size" else []
    assert main(["lora-info", "--config", str(SAM2_LORA), *family, "--model", name]) == 0
    out = capsys.readouterr().out
    assert "image_encoder" in out and "mask_decoder" in out and "prompt_encoder" in out
    assert f"base model: {SIZE_PARAMETERS[name]} parameters" in out
    if name == "sam2.1-large-size":  # 96 Hiera + 32 mask-decoder layers, rank 8
        assert "128" in out and "1,473,152" in out


def test_lora_info_picks_the_family_from_the_model_name(capsys: pytest.CaptureFixture) -> None:
    assert main(["lora-info", "--model", "sam2.1-small-size"]) == 0
    assert "38,538,577" in capsys.readouterr().out
    assert main(["lora-info", "--config", str(SAM2_LORA), "--model", "sam3-size"]) == 2
    assert "`sam3-size` is a sam3 model, not a sam2 one" in capsys.readouterr().err
