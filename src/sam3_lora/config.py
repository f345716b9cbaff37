"""The one config schema: YAML files validated with pydantic, presets, CLI overrides.

A config has the sections ``model``, ``lora``, ``training``, ``data``, ``loss``, ``evaluation``
and ``output``. ``model.family`` picks the task (``sam3``: the concept task); the ``loss``
section is that task's (a union discriminated by ``loss.type``, filled in from the family), and
the ``lora.apply_to_*`` flags are checked against the task's components. Unknown keys, wrong types
and out-of-range values raise :class:`ConfigError` with the file, the key and (for typos) the
closest valid key.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from sam3_lora.errors import ConfigError
from sam3_lora.paths import presets_dir

#: ``model.family`` -> the task whose ``loss`` section applies (``loss.type``).
FAMILY_TASKS = {"sam3": "concept"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSettings(_Section):
    family: Literal["sam3"] = Field(
        "sam3", description="the model family, which picks the task: sam3 (text prompts)"
    )
    name_or_path: str = Field(
        "facebook/sam3",
        description="hub id, local folder, or an alias: tiny, tiny-random, sam3-size",
    )


class LoraSettings(_Section):
    rank: int = Field(16, ge=1, le=1024, description="LoRA rank (bottleneck dimension)")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (scale = alpha / rank)")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout on the LoRA input")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "fc1", "fc2"],
        min_length=1,
        description="layer names to adapt; aliases out_proj, linear1, linear2, all",
    )
    apply_to_vision_encoder: bool = Field(True, description="SAM3: the ViT (Perception Encoder)")
    apply_to_text_encoder: bool = Field(
        False, description="SAM3: the CLIP text encoder and its projection into the detector"
    )
    apply_to_geometry_encoder: bool = Field(False, description="SAM3: box-exemplar encoder")
    apply_to_detr_encoder: bool = Field(False, description="SAM3: the text-image fusion encoder")
    apply_to_detr_decoder: bool = Field(
        False, description="SAM3: the query decoder and its classification head"
    )
    apply_to_mask_decoder: bool = Field(True, description="SAM3: the mask decoder")
    use_dora: bool = Field(False, description="weight-decomposed LoRA (PEFT's use_dora)")
    use_rslora: bool = Field(False, description="rank-stabilised scaling alpha / sqrt(rank)")
    modules_to_save: list[str] | None = Field(
        None, description="modules trained in full and saved with the adapter"
    )
    bias: Literal["none", "all", "lora_only"] = "none"

    def components(self, available: Iterable[str]) -> list[str]:
        """The components of ``available`` (a task's component names) whose flag is on."""
        return [name for name in available if getattr(self, f"apply_to_{name}", False)]

    def component_flags(self) -> list[str]:
        """Every component flag this schema knows, without ``apply_to_``."""
        return [
            name.removeprefix("apply_to_")
            for name in type(self).model_fields
            if name.startswith("apply_to_")
        ]


class TrainingSettings(_Section):
    batch_size: int = Field(1, ge=1, description="images per step and device")
    num_epochs: int = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides num_epochs")
    learning_rate: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(0, ge=0)
    lr_scheduler: Literal["cosine", "inverse_sqrt", "linear", "constant"] = "cosine"
    cooldown_steps: int = Field(
        0, ge=0, description="inverse_sqrt: linear decay to 0 over the last N steps (Meta: 20)"
    )
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_grad_norm: float | None = Field(1.0, gt=0, description="L2 gradient clipping; null = off")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="auto = bf16 on a GPU that supports it, fp32 on CPU"
    )
    seed: int = 0
    eval_steps: int | None = Field(None, ge=1, description="validate every N steps; null = epoch")
    save_steps: int | None = Field(None, ge=1, description="checkpoint every N steps; null = epoch")
    save_total_limit: int = Field(3, ge=1, description="step checkpoints kept")
    logging_steps: int = Field(10, ge=1)
    patience: int | None = Field(None, ge=1, description="early stopping: validations without gain")
    min_delta: float = Field(0.0, ge=0, description="early stopping: smallest gain that counts")
    metric_for_best: str = Field("val/miou", description="validation metric that picks best/")
    greater_is_better: bool = True
    max_nonfinite_steps: int = Field(5, ge=1, description="non-finite losses in a row before stop")
    num_workers: int = Field(2, ge=0, description="data loader worker processes")
    eval_at_start: bool = Field(
        True, description="validate before the first step: the base model's numbers"
    )
    distributed_timeout_s: int = Field(
        600,
        ge=10,
        description="N processes: a collective that waits longer (a process died or hangs) "
        "ends the run with an error",
    )


class SplitSettings(_Section):
    images_dir: str | None = Field(None, description="folder of the images")
    annotation_file: str | None = Field(None, description="COCO JSON file")
    dir: str | None = Field(None, description="a split folder with _annotations.coco.json")


class SyntheticSettings(_Section):
    """A synthetic shapes dataset generated on first use (quick start, demos)."""

    output_dir: str = "data/shapes"
    style: Literal["plain", "shifted"] = "plain"
    num_train: int = Field(200, ge=1)
    num_val: int = Field(50, ge=1)
    seed: int = Field(0, ge=0)
    image_size: int = Field(256, ge=32)
    size_range: tuple[int, int] | None = Field(
        None, description="shape sizes in pixels (min, max); null = 40-110 scaled from 256 px"
    )
    distractors: list[str] = Field(
        default_factory=list, description="shapes drawn but never annotated (e.g. [star])"
    )


class DataSettings(_Section):
    train: SplitSettings | None = Field(None, description="a split folder, or a mapping")
    valid: SplitSettings | None = None
    test: SplitSettings | None = None
    resolution: int | None = Field(None, ge=32, description="model input size; null = the model's")
    max_prompts_per_image: int = Field(16, ge=1, description="cap on category prompts per image")
    num_negative_prompts: int = Field(
        2, ge=0, description="hard-negative prompts (concepts not in the dataset) per image"
    )
    negative_prompts: str | None = Field(
        None, description="text file, one concept per line; null = the built-in vocabulary"
    )
    verify_negatives: bool = Field(
        True,
        description="with negatives on: before training, the base model checks each image's "
        "candidate negatives once (cached next to the dataset); a concept it finds there is "
        "not a negative for that image",
    )
    negative_verify_threshold: float = Field(
        0.5,
        gt=0,
        le=1,
        description="verify_negatives: a candidate the base model finds with a score "
        "(detection x presence) at or above this is present, not a negative",
    )
    negative_verify_pool: int = Field(
        16,
        ge=1,
        description="verify_negatives: candidate negatives checked per image (a seeded sample "
        "of the vocabulary); the image's negatives are drawn among its verified ones",
    )
    scale_range: tuple[float, float] = Field((0.48, 0.98), description="random resize range")
    horizontal_flip: bool = False
    augment: bool = Field(True, description="Meta's random resize + pad on the training split")
    synthetic: SyntheticSettings | None = Field(
        None, description="generate a synthetic shapes dataset (used when train/valid are unset)"
    )

    @field_validator("train", "valid", "test", mode="before")
    @classmethod
    def _split_folder_shorthand(cls, value: Any) -> Any:
        return {"dir": value} if isinstance(value, str) else value

    @field_validator("scale_range")
    @classmethod
    def _check_scale_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= high <= 1:
            raise ValueError("must be two numbers with 0 < low <= high <= 1")
        return value


class ConceptLossSettings(_Section):
    """SAM3's set-prediction loss (``tasks/concept/loss.py``); defaults are Meta's weights."""

    type: Literal["concept"] = Field("concept", description="the task this loss belongs to")
    masks: bool = Field(True, description="mask and semantic terms; false = Meta's detection-only")
    class_weight: float = Field(20.0, ge=0, description="IoU-aware classification")
    presence_weight: float = Field(20.0, ge=0, description="presence BCE (is the concept there)")
    box_l1_weight: float = Field(5.0, ge=0, description="L1 on matched cxcywh boxes")
    giou_weight: float = Field(2.0, ge=0, description="1 - GIoU on matched boxes")
    mask_focal_weight: float = Field(200.0, ge=0, description="sigmoid focal on matched masks")
    mask_dice_weight: float = Field(10.0, ge=0, description="dice on matched masks")
    semantic_focal_weight: float = Field(20.0, ge=0, description="focal on the semantic head")
    semantic_dice_weight: float = Field(30.0, ge=0, description="dice on the semantic head")
    matcher_class_cost: float = Field(2.0, ge=0, description="Hungarian cost: focal on scores")
    matcher_box_cost: float = Field(5.0, ge=0, description="Hungarian cost: L1 on boxes")
    matcher_giou_cost: float = Field(2.0, ge=0, description="Hungarian cost: -GIoU")
    focal_alpha: float = Field(0.25, ge=0, le=1, description="alpha of the focal terms")
    focal_gamma: float = Field(2.0, ge=0, description="gamma of the focal terms")
    semantic_focal_alpha: float = Field(0.6, ge=0, le=1, description="alpha, semantic focal")
    iou_aware_pos_weight: float = Field(
        10.0, ge=0, description="weight of a matched query in the classification BCE"
    )
    aux_layers: bool = Field(True, description="losses on every decoder layer, not only the last")
    batch_scale: bool = Field(True, description="multiply the total by sqrt(prompts in batch)")
    mask_loss_resolution: int | None = Field(
        None, ge=8, description="mask terms on an r x r grid (faster); null = Meta's target size"
    )


#: The SAM3-LoRA name of the SAM3 loss section.
LossSettings = ConceptLossSettings


class EvaluationSettings(_Section):
    score_threshold: float = Field(0.5, ge=0, le=1, description="detection x presence threshold")
    mask_threshold: float = Field(0.5, ge=0, le=1)
    nms_iou_threshold: float | None = Field(
        None,
        gt=0,
        le=1,
        description="drop a detection whose mask overlaps a better one of its prompt above this "
        "IoU (None: off, as in Meta's image model; its video model uses 0.1)",
    )
    num_negative_prompts: int = Field(5, ge=0, description="absent concepts prompted per image")
    batch_size: int = Field(4, ge=1)
    verify_negatives: bool = Field(
        True,
        description="evaluate: the base model checks each image's candidate negatives first "
        "(data.negative_verify_threshold / _pool); a concept it finds is not counted as a "
        "false positive, and is prompted for retention instead",
    )
    retention_prompts: int = Field(
        4,
        ge=0,
        description="per image, concepts outside the dataset that the base model finds "
        "(verified present), prompted to measure retention (evaluate and val/retention; the "
        "validation split is then checked by the base model, cached, even with "
        "data.verify_negatives off); 0 = off",
    )


class OutputSettings(_Section):
    output_dir: str = "outputs/my_model"
    tensorboard: bool = True


class Config(_Section):
    """A whole sam3-lora config."""

    model: ModelSettings = Field(default_factory=ModelSettings)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    loss: ConceptLossSettings = Field(
        default_factory=ConceptLossSettings,
        description="the task's loss (loss.type follows model.family)",
    )
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    output: OutputSettings = Field(default_factory=OutputSettings)
    _source: str = PrivateAttr("<defaults>")

    @model_validator(mode="before")
    @classmethod
    def _loss_type_from_family(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        model = raw.get("model") or {}
        family = model.get("family", "sam3") if isinstance(model, dict) else "sam3"
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
        return raw

    @model_validator(mode="after")
    def _flags_are_components(self) -> Config:
        flags = [name for name in self.lora.model_fields_set if name.startswith("apply_to_")]
        if not flags:  # nothing set: the defaults fit (and the task need not be imported)
            return self
        from sam3_lora.tasks import get_spec

        components = get_spec(self.model.family).components
        wrong = [
            name
            for name in flags
            if name.removeprefix("apply_to_") not in components and getattr(self.lora, name)
        ]
        if wrong:
            raise ValueError(
                f"lora.{wrong[0]}: `{wrong[0].removeprefix('apply_to_')}` is not a component of "
                f"{self.model.family}; its components: {', '.join(components)}"
            )
        return self

    @property
    def source(self) -> str:
        """Where the config was read from (a file path, or <defaults>)."""
        return self._source

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


#: Flat CLI flags users of SAM3-LoRA know, and the keys they set.
FLAT_OVERRIDES = {
    "batch_size": "training.batch_size",
    "learning_rate": "training.learning_rate",
    "num_epochs": "training.num_epochs",
    "steps": "training.max_steps",
    "gradient_accumulation_steps": "training.gradient_accumulation_steps",
    "lora_rank": "lora.rank",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "output_dir": "output.output_dir",
    "model": "model.name_or_path",
}


def resolve_config_path(path_or_preset: str | Path) -> Path:
    """A file path, or a preset name such as ``balanced``.

    Presets are the shipped ``configs/*.yaml`` (package data); ``configs/balanced.yaml`` names
    the preset too when there is no such file in the working directory.
    """
    path = Path(path_or_preset).expanduser()
    if path.is_file():
        return path
    presets = presets_dir()
    for name in (str(path_or_preset), path.stem if path.parent == Path("configs") else ""):
        preset = presets / f"{name}.yaml"
        if name and preset.is_file():
            return preset
    available = ", ".join(sorted(p.stem for p in presets.glob("*.yaml")))
    raise ConfigError(f"config file {path} not found (presets: {available or 'none'})")


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Read a YAML config (or the defaults), apply ``overrides`` and validate.

    Args:
        path: a YAML file or preset name; None for the built-in defaults.
        overrides: dotted keys to values, e.g. ``{"training.max_steps": 6}``.
    """
    source = "<defaults>"
    raw: dict[str, Any] = {}
    if path is not None:
        file = resolve_config_path(path)
        source = str(file)
        try:
            raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{file}: not valid YAML: {error}") from error
        except UnicodeDecodeError as error:
            raise ConfigError(f"{file}: not a UTF-8 text file") from error
        if not isinstance(raw, dict):
            raise ConfigError(f"{file}: expected a mapping of sections, got {type(raw).__name__}")
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value, source="override")
    return validate_config(raw, source)


def validate_config(raw: dict[str, Any], source: str = "<config>") -> Config:
    """Validate a plain dict as a :class:`Config`, with readable errors."""
    try:
        config = Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_describe_errors(error, source)) from None
    config._source = source
    return config


def parse_set_overrides(assignments: list[str]) -> dict[str, Any]:
    """``["training.max_steps=6", "lora.target_modules=[q_proj]"]`` -> a dict (YAML values)."""
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {assignment!r}: expected section.key=value")
        try:
            overrides[key.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as error:
            raise ConfigError(
                f"--set {assignment!r}: the value is not valid YAML ({error})"
            ) from None
    return overrides


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: `{dotted}`: `{part}` is not a section")
        node = child
    node[parts[-1]] = value


def _describe_errors(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        location = [str(part) for part in item["loc"] if not str(part).startswith("function-")]
        dotted = ".".join(location)
        if item["type"] == "extra_forbidden":
            hint = _closest_key(location)
            message = f"`{dotted}`: unknown key" + (f"; did you mean `{hint}`?" if hint else "")
        elif not dotted:  # a check across sections: its text names the keys
            message = item["msg"].removeprefix("Value error, ")
        else:
            value = item.get("input")
            shown = f" = {value!r}" if not isinstance(value, dict) else ""
            text = item["msg"].removeprefix("Value error, ")
            message = f"`{dotted}`{shown}: {text}"
        if message not in lines:
            lines.append(message)
    return f"{source}: " + "; ".join(lines)


def _closest_key(location: list[str]) -> str | None:
    model: type[BaseModel] = Config
    for part in location[:-1]:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        nested = _section_type(annotation)
        if nested is None:
            return None
        model = nested
    candidates = list(model.model_fields)
    match = difflib.get_close_matches(location[-1], candidates, n=1, cutoff=0.5)
    if not match:
        return None
    return ".".join([*location[:-1], match[0]])


def _section_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _section_type(arg)
        if found is not None:
            return found
    return None
