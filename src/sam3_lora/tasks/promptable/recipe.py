"""Build the promptable task and its datasets from a config (what ``sam3-lora train`` runs for
``model.family: sam2`` / ``sam3_tracker``)."""

from __future__ import annotations

import logging

from sam3_lora.compile import compile_vision_encoder
from sam3_lora.config import Config
from sam3_lora.data.coco import CocoDataset
from sam3_lora.errors import ConfigError
from sam3_lora.frozen_weights import store_frozen_weights_for_training
from sam3_lora.models import LoadedModel
from sam3_lora.tasks.finetune import describe_mode
from sam3_lora.tasks.promptable.checkpointing import enable_activation_checkpointing
from sam3_lora.tasks.promptable.data import resolve_promptable_splits
from sam3_lora.tasks.promptable.finetune import group_builder, prepare_network
from sam3_lora.tasks.promptable.loss import PromptableLoss
from sam3_lora.tasks.promptable.module import PromptableModel
from sam3_lora.tasks.promptable.samples import PromptDataset
from sam3_lora.tasks.promptable.spec import ImageInput
from sam3_lora.tasks.promptable.task import PromptableTask
from sam3_lora.tasks.spec import TaskRecipe

logger = logging.getLogger(__name__)

#: ``loss`` settings that configure the model's prompt sampling, not the loss itself.
MODULE_SETTINGS = (
    "correction_rounds",
    "box_probability",
    "box_noise",
    "box_noise_bound",
    "gt_click_probability",
    "feed_back_masks",
    "gate_masks_by_object_score",
)


def image_input_of(loaded: LoadedModel, config: Config) -> ImageInput:
    """The model's own input size and normalisation; ``data.resolution`` must agree with it."""
    if loaded.processor is None:
        raise ConfigError(f"{loaded.source} has no processor: cannot prepare images for it")
    image_input = ImageInput.from_processor(loaded.processor)
    wanted = config.data.resolution
    if wanted is not None and wanted != image_input.resolution:
        raise ConfigError(
            f"{config.source}: data.resolution {wanted}: {loaded.source} takes "
            f"{image_input.resolution} px inputs (its positional embeddings are fixed); remove "
            "data.resolution"
        )
    return image_input


def build_promptable_datasets(
    config: Config, image_input: ImageInput
) -> tuple[PromptDataset, PromptDataset | None]:
    """Training and validation datasets of ``config`` (``data.max_prompts_per_image`` objects
    per image at most; ``data.horizontal_flip`` the only augmentation)."""
    data = config.data
    train_coco, valid_coco = resolve_promptable_splits(config)
    warn_box_only(train_coco)
    common = {"max_objects_per_image": data.max_prompts_per_image, "seed": config.training.seed}
    train = PromptDataset(
        train_coco, image_input, train=True, horizontal_flip=data.horizontal_flip, **common
    )
    valid = None
    if valid_coco is not None:
        valid = PromptDataset(valid_coco, image_input, train=False, **common)
    return train, valid


def warn_box_only(coco: CocoDataset) -> int:
    """Warn when annotations have no segmentation (their box becomes the mask target)."""
    box_only = sum(
        1
        for index in range(len(coco))
        for annotation in coco.raw_annotations(index)
        if not annotation.get("segmentation")
    )
    if box_only:
        logger.warning(
            "%s: %d annotations have a box but no mask; their filled box is the mask target, "
            "so the model learns box-shaped masks for them",
            coco.annotation_file,
            box_only,
        )
    return box_only


def build_promptable_task(config: Config, loaded: LoadedModel) -> PromptableTask:
    """The promptable task of ``config`` on the loaded base model: LoRA injected
    (``finetune.mode: lora``) or the weights made trainable (``full``), with the optimizer
    groups of the mode (Meta's SAM2.1 groups in full mode); activation checkpointing on when
    ``training.gradient_checkpointing`` says so, the image encoder compiled when
    ``training.compile`` does."""
    network = prepare_network(loaded.model, config)
    if config.training.gradient_checkpointing:
        enable_activation_checkpointing(network)
    if config.training.compile:
        compile_vision_encoder(network)
    settings = config.loss.model_dump(exclude={"type"})
    module = PromptableModel(network, **{k: settings.pop(k) for k in MODULE_SETTINGS})
    return PromptableTask(
        module,
        PromptableLoss(**settings),
        mask_threshold=config.evaluation.mask_threshold,
        groups=group_builder(network, config),
        processor=loaded.processor,
    )


def build_promptable_recipe(config: Config, loaded: LoadedModel) -> TaskRecipe:
    """The promptable task and its datasets for ``sam3-lora train``. Under bf16 / fp16 mixed
    precision a LoRA run's frozen linear / conv weights are stored in the compute dtype
    (:mod:`sam3_lora.frozen_weights`; ``model.frozen_weights_dtype``)."""
    image_input = image_input_of(loaded, config)
    task = build_promptable_task(config, loaded)
    # The sam2_lora layout saves merged models while training: they fold the adapter into the
    # float base, so the float weights are kept on the CPU beside their bf16 copies.
    merges = loaded.spec.output_layout(config) == "sam2_lora"
    store_frozen_weights_for_training(task.network, config, keep_originals=merges)
    train, valid = build_promptable_datasets(config, image_input)
    description = (
        f"{describe_mode(config)}; {len(train)} training images, "
        f"{len(valid) if valid else 0} validation images, "
        f"{len(train.coco.categories)} categories, resolution {image_input.resolution}, "
        f"up to {config.data.max_prompts_per_image} objects per image"
    )
    return TaskRecipe(task, train, valid, description)
