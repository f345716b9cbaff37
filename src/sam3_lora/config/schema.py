"""The root :class:`Config`: the sections, the defaults that follow ``model.family`` and the
checks across sections; plus the family helpers (a family's task, components and LoRA targets).
"""

from __future__ import annotations

from typing import Annotated, Any

import yaml
from pydantic import Field, PrivateAttr, model_validator

from sam3_lora.config.sections import (
    ConceptLossSettings,
    DataSettings,
    EvaluationSettings,
    FinetuneSettings,
    LoraSettings,
    ModelSettings,
    OutputSettings,
    PromptableLossSettings,
    TrainingSettings,
    _Section,
)

#: ``model.family`` -> the task whose ``loss`` section applies (``loss.type``).
FAMILY_TASKS = {"sam3": "concept", "sam2": "promptable", "sam3_tracker": "promptable"}
#: The family whose LoRA defaults are the schema's own (the others' come from their spec).
SCHEMA_FAMILY = "sam3"
#: ``training.seed`` of the other families when a config sets none (the SAM2-LoRA recipe's).
PROMPTABLE_SEED = 42


class Config(_Section):
    """A whole sam3-lora config."""

    model: ModelSettings = Field(default_factory=ModelSettings)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    finetune: FinetuneSettings = Field(default_factory=FinetuneSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    loss: Annotated[ConceptLossSettings | PromptableLossSettings, Field(discriminator="type")] = (
        Field(
            default_factory=ConceptLossSettings,
            description="the task's loss (loss.type follows model.family)",
        )
    )
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    output: OutputSettings = Field(default_factory=OutputSettings)
    _source: str = PrivateAttr("<defaults>")

    @model_validator(mode="before")
    @classmethod
    def _defaults_from_family(cls, raw: Any) -> Any:
        """``loss.type`` from the family; the family's ``lora.target_modules``, model and seed
        when unset."""
        if not isinstance(raw, dict):
            return raw
        model = raw.get("model") or {}
        family = model.get("family", SCHEMA_FAMILY) if isinstance(model, dict) else SCHEMA_FAMILY
        loss = raw.get("loss")
        task = FAMILY_TASKS.get(family)
        if task is not None and (loss is None or isinstance(loss, dict)):
            loss = dict(loss or {})
            if loss.setdefault("type", task) != task:
                raise ValueError(
                    f"loss.type `{loss['type']}` is not the loss of model.family `{family}` "
                    f"(`{task}`); remove loss.type"
                )
            raw = {**raw, "loss": loss}
        if task is None or family == SCHEMA_FAMILY:
            return raw
        training = raw.get("training")
        if (training is None or isinstance(training, dict)) and "seed" not in (training or {}):
            raw = {**raw, "training": {**(training or {}), "seed": PROMPTABLE_SEED}}
        lora = raw.get("lora")
        if (lora is None or isinstance(lora, dict)) and "target_modules" not in (lora or {}):
            raw = {**raw, "lora": {**(lora or {}), "target_modules": family_target_modules(family)}}
        from sam3_lora.tasks import get_spec

        if isinstance(model, dict) and "name_or_path" not in model:
            raw = {**raw, "model": {**model, "name_or_path": get_spec(family).default_model}}
        finetune = raw.get("finetune")
        if (finetune is None or isinstance(finetune, dict)) and "lr_scale" not in (finetune or {}):
            scale = get_spec(family).full_lr_scale
            raw = {**raw, "finetune": {**(finetune or {}), "lr_scale": scale}}
        return raw

    @model_validator(mode="after")
    def _flags_are_components(self) -> Config:
        flags = [name for name in self.lora.model_fields_set if name.startswith("apply_to_")]
        per_component = isinstance(self.lora.target_modules, dict)
        if not flags and not per_component:  # the defaults fit (the task need not be imported)
            return self
        components = family_components(self.model.family)
        wrong = [name for name in flags if name.removeprefix("apply_to_") not in components]
        if wrong:
            valid = ", ".join(f"apply_to_{c}" for c in components)
            raise ValueError(
                f"lora.{wrong[0]}: `{wrong[0].removeprefix('apply_to_')}` is not a component of "
                f"{self.model.family}; its flags are {valid}"
            )
        if per_component:
            unknown = [k for k in self.lora.target_modules if k not in components]
            if unknown:
                raise ValueError(
                    f"lora.target_modules: `{unknown[0]}` is not a component of "
                    f"{self.model.family}; its components: {', '.join(components)}"
                )
        return self

    @model_validator(mode="after")
    def _quantization_needs_lora(self) -> Config:
        if self.model.quantization != "none" and self.finetune.mode != "lora":
            raise ValueError(
                f"model.quantization {self.model.quantization} trains LoRA adapters on a frozen "
                "4-bit base; finetune.mode full would train the 4-bit weights themselves. Set "
                "finetune.mode: lora, or model.quantization: none"
            )
        return self

    @model_validator(mode="after")
    def _finetune_names_are_components(self) -> Config:
        finetune = self.finetune
        if not finetune.freeze and not finetune.learning_rates:
            return self
        if finetune.freeze and finetune.mode == "lora":
            raise ValueError(
                "finetune.freeze applies to finetune.mode full; a LoRA run trains only the "
                "components whose lora.apply_to_* is true (set finetune.mode: full, or remove "
                "finetune.freeze)"
            )
        from sam3_lora.tasks import get_spec

        components = list(get_spec(self.model.family).components)
        named = [("freeze", name) for name in finetune.freeze]
        named += [("learning_rates", name) for name in finetune.learning_rates]
        for key, name in named:
            if name not in components and not (key == "learning_rates" and name == "default"):
                extra = ", default" if key == "learning_rates" else ""
                raise ValueError(
                    f"finetune.{key}: `{name}` is not a component of {self.model.family}; "
                    f"its components: {', '.join(components)}{extra}"
                )
        if len(set(finetune.freeze)) == len(components):
            raise ValueError(
                "finetune.freeze: every component is frozen, nothing would be trained; "
                "remove one from the list"
            )
        return self

    @model_validator(mode="after")
    def _layout_fits_the_mode(self) -> Config:
        if self.output.layout == "sam2_lora" and self.finetune.mode == "full":
            raise ValueError(
                "output.layout sam2_lora names LoRA adapter folders, but finetune.mode full "
                "saves whole models; use output.layout standard (or auto)"
            )
        return self

    @property
    def source(self) -> str:
        """Where the config was read from (a file path, or <defaults>)."""
        return self._source

    def to_yaml(self) -> str:
        """The whole config as YAML (LoRA flags of other families' components left out, so the
        file validates again)."""
        data = self.model_dump(mode="json")
        components = family_components(self.model.family)
        data["lora"] = {
            k: v
            for k, v in data["lora"].items()
            if not k.startswith("apply_to_") or k.removeprefix("apply_to_") in components
        }
        return yaml.safe_dump(data, sort_keys=False)


def family_components(family: str) -> tuple[str, ...]:
    """The LoRA components of ``family`` (its spec's), i.e. its ``lora.apply_to_*`` flags."""
    from sam3_lora.tasks import get_spec

    return tuple(get_spec(family).components)


def family_target_modules(family: str) -> list[str] | dict[str, list[str]]:
    """``lora.target_modules`` of ``family`` when a config sets none."""
    from sam3_lora.tasks import get_spec

    defaults = get_spec(family).default_target_modules
    if defaults is None:
        return list(LoraSettings.model_fields["target_modules"].default_factory())
    return {component: list(names) for component, names in defaults.items()}
