"""The config sections: one pydantic model per section (``model``, ``lora``, ``training`` ...).

Each section forbids unknown keys and validates on assignment; the checks across sections, and
the defaults that follow ``model.family``, are the root :class:`~sam3_lora.config.schema.Config`'s.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


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
