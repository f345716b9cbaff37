"""Tasks: one folder per model family's workflow, each described by a :class:`TaskSpec`.

``concept/`` is SAM3's text-prompted detection + segmentation. A task folder holds its spec
(model classes, components, normalisation, tiny builders), its ``nn.Module`` forward, its loss,
its sample builder and its predictor. The engine never imports a task: it receives one.
"""

from __future__ import annotations

import importlib

from sam3_lora.errors import ConfigError
from sam3_lora.tasks.spec import TaskSpec

#: ``model.family`` -> the module holding that family's ``SPEC``.
_SPEC_MODULES = {
    "sam3": "sam3_lora.tasks.concept.spec",
}

__all__ = ["FAMILIES", "TaskSpec", "get_spec", "spec_for_model"]

FAMILIES = tuple(_SPEC_MODULES)


def get_spec(family: str) -> TaskSpec:
    """The spec of ``model.family`` (``sam3``)."""
    module = _SPEC_MODULES.get(family)
    if module is None:
        raise ConfigError(f"model.family `{family}`: choose one of {', '.join(FAMILIES)}")
    return importlib.import_module(module).SPEC


def spec_for_model(model: object) -> TaskSpec:
    """The spec whose ``transformers`` model class ``model`` is (PEFT / DDP wrappers looked
    through)."""
    from sam3_lora.tasks.spec import unwrap_model

    base = unwrap_model(model)
    for family in FAMILIES:
        spec = get_spec(family)
        if isinstance(base, spec.model_class):
            return spec
    raise TypeError(f"no task knows the model class {type(base).__name__}")
