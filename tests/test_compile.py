"""training.compile: the vision encoder's trunk and neck compiled in place (names unchanged).
Compiling itself happens at the first forward (about 95 s for the tiny SAM3 on one CPU core,
see benchmarks/README.md), so these tests check the wiring, not a compiled step."""

from __future__ import annotations

import pytest
import torch

from sam3_lora.compile import compile_vision_encoder
from sam3_lora.config import load_config
from sam3_lora.errors import ConfigError
from sam3_lora.models import load_model
from sam3_lora.tasks.concept.recipe import build_concept_task
from sam3_lora.tasks.promptable.recipe import build_promptable_task


def _compiled(module: torch.nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


def test_compile_is_off_by_default() -> None:
    assert load_config().training.compile is False


BUILDERS = {"sam3": build_concept_task, "sam2": build_promptable_task}


@pytest.mark.parametrize("family", list(BUILDERS))
def test_the_task_compiles_the_vision_encoder_in_place(family: str) -> None:
    loaded = load_model("tiny-random", family)
    names_before = [name for name, _ in loaded.model.named_parameters()]
    config = load_config(None, {"model.family": family, "training.compile": True})
    task = BUILDERS[family](config, loaded)
    encoder = task.model.network.get_base_model().vision_encoder
    assert _compiled(encoder.backbone) and _compiled(encoder.neck)
    assert not _compiled(encoder)  # its thin forward (and hooks on it) stay eager
    names_after = [n.removeprefix("base_model.model.") for n, _ in task.network.named_parameters()]
    assert set(names_before) <= {n.replace(".base_layer", "") for n in names_after}


def test_a_model_without_vision_encoder_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="training.compile"):
        compile_vision_encoder(torch.nn.Linear(2, 2))
