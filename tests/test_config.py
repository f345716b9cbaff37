from __future__ import annotations

from pathlib import Path

import pytest

from sam3_lora.config import load_config, parse_set_overrides, validate_config
from sam3_lora.errors import ConfigError
from sam3_lora.paths import presets_dir
from sam3_lora.tasks.concept.spec import COMPONENTS as SAM3_COMPONENTS


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"lora": {"rnak": 4}}, "`lora.rnak`: unknown key; did you mean `lora.rank`?"),
        ({"trainig": {}}, "`trainig`: unknown key; did you mean `training`?"),
        ({"lora": {"rank": 0}}, "`lora.rank` = 0: Input should be greater than or equal to 1"),
        ({"lora": {"dropout": 1.5}}, "`lora.dropout` = 1.5: Input should be less than 1"),
        ({"training": {"learning_rate": -1e-4}}, "`training.learning_rate` = -0.0001"),
        ({"training": {"batch_size": "two"}}, "`training.batch_size` = 'two'"),
        ({"data": {"train": {"images_dri": "x"}}}, "did you mean `data.train.images_dir`?"),
        ({"data": {"scale_range": [0.9, 0.2]}}, "0 < low <= high <= 1"),
    ],
)
def test_config_errors_name_file_key_and_fix(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        validate_config(raw, "configs/mine.yaml")
    assert str(error.value).startswith("configs/mine.yaml: ")
    assert message in str(error.value)


def test_config_file_errors(tmp_path: Path) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("lora: {rank: 4\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad_yaml)
    typo = tmp_path / "typo.yaml"
    typo.write_text("lora:\n  rnak: 4\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: `lora.rnak`: unknown key; did you mean"):
        load_config(typo)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_presets_load_with_documented_settings() -> None:
    assert load_config("quickstart").data.synthetic is not None
    minimal = load_config("minimal")
    assert (minimal.lora.rank, minimal.lora.alpha) == (4, 8)
    assert minimal.lora.target_modules == ["q_proj", "v_proj"]
    assert minimal.lora.components(SAM3_COMPONENTS) == ["vision_encoder"]
    balanced = load_config(presets_dir() / "balanced.yaml")
    assert balanced.lora.components(SAM3_COMPONENTS) == ["vision_encoder", "mask_decoder"]
    assert load_config("full").lora.components(SAM3_COMPONENTS) == [
        "vision_encoder",
        "text_encoder",
        "geometry_encoder",
        "detr_encoder",
        "detr_decoder",
        "mask_decoder",
    ]
    maximum = load_config("maximum")
    assert (maximum.lora.rank, maximum.lora.alpha) == (32, 64)
    assert "out_proj" in maximum.lora.target_modules
    assert maximum.lora.components(SAM3_COMPONENTS) == [
        "vision_encoder",
        "detr_encoder",
        "detr_decoder",
        "mask_decoder",
    ]


def test_overrides_dotted_and_typed() -> None:
    overrides = parse_set_overrides(["training.max_steps=6", "lora.target_modules=[q_proj, fc1]"])
    config = load_config("balanced", {**overrides, "lora.rank": 8})
    assert config.training.max_steps == 6
    assert config.lora.target_modules == ["q_proj", "fc1"]
    assert config.lora.rank == 8
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_set_overrides(["training.max_steps"])
    with pytest.raises(ConfigError, match="`training.max_stpes`: unknown key"):
        load_config("balanced", {"training.max_stpes": 3})


def test_split_shorthand() -> None:
    config = validate_config({"data": {"train": "data/train", "valid": {"dir": "data/valid"}}})
    assert config.data.train is not None and config.data.train.dir == "data/train"
    assert config.data.valid is not None and config.data.valid.dir == "data/valid"
