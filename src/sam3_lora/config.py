"""The one config schema: YAML files validated with pydantic, presets, CLI overrides.

A config has the sections ``model``, ``lora``, ``training``, ``data``, ``loss``, ``evaluation``
and ``output``. ``model.family`` picks the task (``sam3``: the concept task; ``sam2`` and
``sam3_tracker``: the promptable task); the ``loss`` section is that task's (a union
discriminated by ``loss.type``, filled in from the family), the ``lora.apply_to_*`` flags are
checked against the task's components, and ``lora.target_modules`` defaults to the family's.
Unknown keys, wrong types and out-of-range values raise :class:`ConfigError` with the file, the
key and (for typos) the closest valid key.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

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
FAMILY_TASKS = {"sam3": "concept", "sam2": "promptable", "sam3_tracker": "promptable"}
#: The family whose LoRA defaults are the schema's own (the others' come from their spec).
SCHEMA_FAMILY = "sam3"
#: ``training.seed`` of the other families when a config sets none (the SAM2-LoRA recipe's).
PROMPTABLE_SEED = 42


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSettings(_Section):
    family: Literal["sam3", "sam2", "sam3_tracker"] = Field(
        "sam3",
        description="the model family, which picks the task: sam3 (text prompts), sam2 (SAM2 / "
        "SAM2.1, boxes and clicks), sam3_tracker (SAM3's box / click mode)",
    )
    name_or_path: str = Field(
        "facebook/sam3",
        description="hub id, local folder, or an alias: tiny, tiny-random, sam3-size (sam3); "
        "tiny, tiny-random, sam2.1-{tiny,small,base-plus,large}-size (sam2); "
        "tiny-random, sam3-tracker-size (sam3_tracker)",
    )
    quantization: Literal["none", "4bit"] = Field(
        "none",
        description="4bit: QLoRA, the base loaded in 4 bits (bitsandbytes NF4, double "
        "quantisation; matmuls in bf16 on a GPU, fp32 on CPU) with LoRA in float on top, for "
        "8-12 GB GPUs; heads and small layers stay in float; LoRA mode only; needs "
        '`pip install "sam3-lora[qlora]"`. The adapter loads onto the float base',
    )
    frozen_weights_dtype: Literal["auto", "float32"] = Field(
        "auto",
        description="LoRA training: auto stores the frozen weights of linear / conv layers in "
        "the compute dtype of training.mixed_precision (bf16 / fp16; fp32 on CPU), where "
        "autocast casts them anyway: same numbers, about half the weight memory and no "
        "per-step autocast copies; LoRA weights, norms and embeddings stay fp32. Not with "
        "full fine-tuning, QLoRA, DoRA or FSDP. float32: keep fp32 masters",
    )


class LoraSettings(_Section):
    rank: int = Field(16, ge=1, le=1024, description="LoRA rank (bottleneck dimension)")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (scale = alpha / rank)")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout on the LoRA input")
    target_modules: list[str] | dict[str, list[str]] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "fc1", "fc2"],
        min_length=1,
        description="layers to adapt: names or dotted name ends (attn.qkv), aliases out_proj, "
        "linear1, linear2, all; or per component {image_encoder: [attn.qkv], ...}. Default: "
        "the family's (SAM3: this list; SAM2: the image encoder's attention, the mask decoder's "
        "attention and MLPs)",
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
    apply_to_mask_decoder: bool = Field(
        True, description="every family: the mask decoder (SAM2: with the no-memory embedding)"
    )
    apply_to_image_encoder: bool = Field(
        True, description="SAM2 / SAM3 tracker: the image encoder (Hiera / SAM3's ViT)"
    )
    apply_to_prompt_encoder: bool = Field(
        False, description="SAM2 / SAM3 tracker: the box / point / mask prompt encoder"
    )
    use_dora: bool = Field(False, description="weight-decomposed LoRA (PEFT's use_dora)")
    use_rslora: bool = Field(False, description="rank-stabilised scaling alpha / sqrt(rank)")
    modules_to_save: list[str] | None = Field(
        None, description="modules trained in full and saved with the adapter"
    )
    bias: Literal["none", "all", "lora_only"] = "none"

    @field_validator("target_modules")
    @classmethod
    def _targets_not_empty(cls, value: list[str] | dict[str, list[str]]) -> Any:
        if isinstance(value, dict) and not all(value.values()):
            empty = next(k for k, v in value.items() if not v)
            raise ValueError(f"`{empty}` lists no layer; remove it or name its layers")
        return value

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
    min_lr_ratio: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="cosine: the learning rate it ends at, as a share of the peak (Meta's SAM2.1: "
        "0.1); 0 = decay to zero",
    )
    cooldown_steps: int = Field(
        0, ge=0, description="inverse_sqrt: linear decay to 0 over the last N steps (Meta: 20)"
    )
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_grad_norm: float | None = Field(1.0, gt=0, description="L2 gradient clipping; null = off")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="auto = bf16 on a GPU that supports it, fp32 on CPU"
    )
    seed: int = Field(
        0,
        description="seeds every RNG (data order, prompt sampling, LoRA init); default 0 for "
        "sam3, 42 for sam2 / sam3_tracker (the SAM2-LoRA recipe's)",
    )
    deterministic: bool = Field(
        False,
        description="deterministic kernels (torch.use_deterministic_algorithms, cuDNN without "
        "autotuning, a fixed cuBLAS workspace): the same config gives the same losses bit for "
        "bit on the same machine; slower on GPU",
    )
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
    gradient_checkpointing: bool = Field(
        False,
        description="recompute activations in the backward pass instead of keeping them (SAM3: "
        "ViT, DETR layers and the mask decoder's pixel decoder; SAM2 / SAM3 tracker: image "
        "encoder blocks and the mask decoder's two-way attention blocks): less memory, about a "
        "third more compute (LoRA and full mode)",
    )
    cache_vision_features: bool = Field(
        False,
        description="keep each training image's vision features after the first epoch and "
        "reuse them (epochs after the first skip the ViT); needs a frozen vision encoder (no "
        "adapter in it) and data.augment: false, horizontal_flip: false",
    )
    feature_cache_storage: Literal["memory", "disk"] = Field(
        "memory",
        description="cache_vision_features in CPU memory, or on disk under "
        "<output_dir>/feature-cache/ (shared by the processes of a distributed run, removed "
        "when they exit); 56 MB per image at 1008 px in bf16",
    )
    feature_cache_max_gb: float | None = Field(
        None,
        gt=0,
        description="most the feature cache stores per process; images past it are computed "
        "every epoch. null: memory storage takes at most half the memory available at the "
        "start (shared by the node's processes), disk storage stops at 5 GiB free",
    )
    compile: bool = Field(
        False,
        description="torch.compile the vision encoder (one fixed image size: one graph); the "
        "first step pays the compile time (minutes at 1008 px). Off by default: see "
        "benchmarks/README.md for what it measured",
    )


class FinetuneSettings(_Section):
    """What is trained: LoRA adapters, or the weights themselves with Meta's per-component
    learning rates (``lr = learning_rates[component] * lr_scale``, layer-wise decay on the ViT)."""

    mode: Literal["lora", "full"] = Field(
        "lora",
        description="lora: adapters as the lora section says (training.learning_rate); "
        "full: every weight of the components not in `freeze`",
    )
    learning_rates: dict[str, float] = Field(
        default_factory=dict,
        description="full mode: base learning rate per component before lr_scale; `default` "
        "for the rest; unset keys take the task's (Meta's) values, e.g. SAM3 vision_encoder "
        "2.5e-4, text_encoder 5e-5, default 8e-4; SAM2 image_encoder 3e-6, default 5e-6",
    )
    lr_scale: float = Field(
        0.1,
        gt=0,
        description="full mode: multiplies every learning rate; default 0.1 for sam3 (Meta's "
        "SAM3 config), 1 for sam2 / sam3_tracker (Meta's SAM2.1 rates as they are)",
    )
    layer_decay: float = Field(
        0.9,
        gt=0,
        le=1,
        description="full mode: image-encoder trunk block k of n (SAM3's ViT, SAM2's Hiera) "
        "gets decay^(n - k), the patch embedding decay^(n + 1); 1 = off",
    )
    weight_decay: float = Field(
        0.1, ge=0, description="full mode: AdamW weight decay (none on biases and LayerNorms)"
    )
    freeze: list[str] = Field(
        default_factory=list,
        description="full mode: components kept frozen, e.g. [vision_encoder, text_encoder]",
    )

    @field_validator("learning_rates")
    @classmethod
    def _positive_learning_rates(cls, value: dict[str, float]) -> dict[str, float]:
        for component, rate in value.items():
            if not rate > 0:
                raise ValueError(f"`{component}`: a learning rate must be > 0, got {rate}")
        return value


class SplitSettings(_Section):
    images_dir: str | None = Field(None, description="folder of the images")
    annotation_file: str | None = Field(None, description="COCO JSON file")
    dir: str | None = Field(None, description="a split folder with _annotations.coco.json")


class SyntheticSettings(_Section):
    """A synthetic shapes dataset generated on first use (quick start, demos)."""

    output_dir: str = "data/shapes"
    style: Literal["plain", "shifted", "steel"] = Field(
        "plain",
        description="plain / shifted: coloured shapes (SAM3's quick start); steel: scratches and "
        "blobs on brushed metal (the SAM2 quick start, model.family sam2 only)",
    )
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


class PromptableLossSettings(_Section):
    """SAM2.1's ``MultiStepMultiMasksAndIous`` and the prompts it is trained on
    (``tasks/promptable/``); defaults are Meta's SAM2.1 fine-tuning settings."""

    type: Literal["promptable"] = Field("promptable", description="the task this loss belongs to")
    focal_weight: float = Field(20.0, ge=0, description="sigmoid focal on the best of the masks")
    dice_weight: float = Field(1.0, ge=0, description="dice on the best of the masks")
    iou_weight: float = Field(1.0, ge=0, description="predicted vs actual IoU (every mask)")
    object_score_weight: float = Field(1.0, ge=0, description="object-score BCE (is it there)")
    focal_alpha: float = Field(0.25, le=1, description="alpha of the mask focal loss (<0: none)")
    focal_gamma: float = Field(2.0, ge=0, description="gamma of the mask focal loss")
    supervise_all_iou: bool = Field(True, description="IoU loss on all masks, not only the best")
    iou_use_l1_loss: bool = Field(True, description="L1 IoU loss (Meta); false = squared error")
    mask_loss_resolution: int | None = Field(
        None, ge=8, description="mask terms on an r x r grid (less memory); null = the input size"
    )
    correction_rounds: int = Field(
        7, ge=0, description="corrective clicks per object after the first prompt (each a step)"
    )
    box_probability: float = Field(
        0.5, ge=0, le=1, description="chance that an object's first prompt is its box, not a click"
    )
    box_noise: float = Field(0.1, ge=0, description="box corner noise, fraction of the box side")
    box_noise_bound: float = Field(20.0, ge=0, description="box corner noise cap, pixels")
    gt_click_probability: float = Field(
        0.1, ge=0, le=1, description="chance a corrective click comes from the ground truth"
    )
    feed_back_masks: bool = Field(True, description="feed each step's mask to the next step")
    gate_masks_by_object_score: bool = Field(
        True, description="training: masks of objects scored absent set to -1024 (Meta)"
    )


#: The SAM3-LoRA name of the SAM3 loss section.
LossSettings = ConceptLossSettings
#: ``loss.type`` -> its section.
LOSS_SECTIONS: dict[str, type[_Section]] = {
    "concept": ConceptLossSettings,
    "promptable": PromptableLossSettings,
}


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
    output_dir: str = Field(
        "outputs/my_model",
        description="the run's folder (layout standard), or the folder of the run folders "
        "(layout sam2_lora)",
    )
    tensorboard: bool = True
    layout: Literal["auto", "standard", "sam2_lora"] = Field(
        "auto",
        description="standard: checkpoints/step-N, best/, final/, metrics.csv in output_dir; "
        "sam2_lora: a run folder {family}_{size}_lora_r{rank}_a{alpha}_lr{lr}_{timestamp} with "
        "latest_lora_step*/, best_lora_step*_iou*_dice*/ + best_merged_step*/, "
        "final_lora_step*/, logs/training_metrics_lora_*.csv; auto: sam2_lora for LoRA runs "
        "of sam2 / sam3_tracker, standard otherwise",
    )


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


#: Flat CLI flags users of SAM3-LoRA know, and the keys they set.
FLAT_OVERRIDES = {
    "batch_size": "training.batch_size",
    "learning_rate": "training.learning_rate",
    "weight_decay": "training.weight_decay",
    "num_epochs": "training.num_epochs",
    "steps": "training.max_steps",
    "gradient_accumulation_steps": "training.gradient_accumulation_steps",
    "lora_rank": "lora.rank",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "output_dir": "output.output_dir",
    "model": "model.name_or_path",
    "family": "model.family",
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
        loss_type = None
        if location[:1] == ["loss"] and len(location) > 1 and location[1] in LOSS_SECTIONS:
            loss_type = location.pop(1)  # the union's tag, not a key the user wrote
        dotted = ".".join(location)
        if item["type"] == "extra_forbidden":
            hint = _closest_key(location, loss_type)
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


def _closest_key(location: list[str], loss_type: str | None = None) -> str | None:
    model: type[BaseModel] = Config
    for part in location[:-1]:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        nested = _section_type(annotation)
        if model is Config and part == "loss" and loss_type is not None:
            nested = LOSS_SECTIONS[loss_type]
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
