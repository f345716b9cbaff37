"""Tasks: one folder per model family's workflow, each described by a :class:`TaskSpec`.

``concept/`` is SAM3's text-prompted detection + segmentation; ``promptable/`` is SAM2 / SAM2.1
and SAM3's tracker (a box or clicks in, one mask per object out). A task folder holds its spec
(model classes, components, normalisation, tiny builders), its ``nn.Module`` forward, its loss,
its sample builder and its predictor. The engine never imports a task: it receives one.
"""

from __future__ import annotations

import importlib

from sam3_lora.errors import ConfigError
from sam3_lora.tasks.spec import TaskSpec

#: ``model.family`` -> ``module`` (its ``SPEC``) or ``module:ATTRIBUTE`` (a module that holds the
#: specs of several families).
_SPEC_MODULES = {
    "sam3": "sam3_lora.tasks.concept.spec",
    "sam2": "sam3_lora.tasks.promptable.spec:SAM2_SPEC",
    "sam3_tracker": "sam3_lora.tasks.promptable.spec:SAM3_TRACKER_SPEC",
}

__all__ = [
    "DEFAULT_FAMILY",
    "FAMILIES",
    "TaskSpec",
    "family_for_name",
    "get_spec",
    "spec_for_model",
]

FAMILIES = tuple(_SPEC_MODULES)
DEFAULT_FAMILY = "sam3"


def get_spec(family: str) -> TaskSpec:
    """The spec of ``model.family`` (``sam3``, ``sam2``, ``sam3_tracker``)."""
    location = _SPEC_MODULES.get(family)
    if location is None:
        raise ConfigError(f"model.family `{family}`: choose one of {', '.join(FAMILIES)}")
    module, _, attribute = location.partition(":")
    return getattr(importlib.import_module(module), attribute or "SPEC")


def spec_for_model(model: object) -> TaskSpec:
    """The spec whose ``transformers`` model class ``model`` is (PEFT / DDP wrappers looked
    through)."""
    from sam3_lora.tasks.spec import unwrap_model

    base = unwrap_model(model)
    for family in FAMILIES:
        spec = get_spec(family)
        if type(base) is spec.model_class:
            return spec
    for family in FAMILIES:  # subclasses of a family's class
        spec = get_spec(family)
        if isinstance(base, spec.model_class):
            return spec
    raise TypeError(f"no task knows the model class {type(base).__name__}")


def family_for_name(name: str | None) -> str | None:
    """The one family whose alias or known hub id ``name`` is (``sam2.1-large-size`` ->
    ``sam2``); None when no family or several (``tiny``) claim it."""
    if not name:
        return None
    owners = [f for f in FAMILIES if name in get_spec(f).aliases or name in get_spec(f).hub_ids]
    return owners[0] if len(owners) == 1 else None
