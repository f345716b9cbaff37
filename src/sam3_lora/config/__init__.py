"""The one config schema: YAML files validated with pydantic, presets, CLI overrides.

A config has the sections ``model``, ``lora``, ``training``, ``data``, ``loss``, ``evaluation``
and ``output``. ``model.family`` picks the task (``sam3``: the concept task; ``sam2`` and
``sam3_tracker``: the promptable task); the ``loss`` section is that task's (a union
discriminated by ``loss.type``, filled in from the family), the ``lora.apply_to_*`` flags are
checked against the task's components, and ``lora.target_modules`` defaults to the family's.
Unknown keys, wrong types and out-of-range values raise :class:`ConfigError` with the file, the
key and (for typos) the closest valid key.

The modules: :mod:`~sam3_lora.config.sections` (one model per section),
:mod:`~sam3_lora.config.schema` (the root :class:`Config` and the family helpers) and
:mod:`~sam3_lora.config.loading` (presets, files, overrides, error messages). Import from
``sam3_lora.config``; every public name is re-exported here.
"""

from __future__ import annotations

from sam3_lora.config.loading import (
    FLAT_OVERRIDES,
    load_config,
    parse_set_overrides,
    resolve_config_path,
    validate_config,
)
from sam3_lora.config.schema import (
    FAMILY_TASKS,
    PROMPTABLE_SEED,
    SCHEMA_FAMILY,
    Config,
    family_components,
    family_target_modules,
)
from sam3_lora.config.sections import (
    LOSS_SECTIONS,
    ConceptLossSettings,
    DataSettings,
    EvaluationSettings,
    FinetuneSettings,
    LoraSettings,
    LossSettings,
    ModelSettings,
    OutputSettings,
    PromptableLossSettings,
    SplitSettings,
    SyntheticSettings,
    TrainingSettings,
)

__all__ = [
    "FAMILY_TASKS",
    "FLAT_OVERRIDES",
    "LOSS_SECTIONS",
    "PROMPTABLE_SEED",
    "SCHEMA_FAMILY",
    "ConceptLossSettings",
    "Config",
    "DataSettings",
    "EvaluationSettings",
    "FinetuneSettings",
    "LoraSettings",
    "LossSettings",
    "ModelSettings",
    "OutputSettings",
    "PromptableLossSettings",
    "SplitSettings",
    "SyntheticSettings",
    "TrainingSettings",
    "family_components",
    "family_target_modules",
    "load_config",
    "parse_set_overrides",
    "resolve_config_path",
    "validate_config",
]
