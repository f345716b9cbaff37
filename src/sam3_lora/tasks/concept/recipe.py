"""Build the concept task and its datasets from a config (what ``sam3-lora train`` runs)."""

from __future__ import annotations

import logging

import torch

from sam3_lora.config import Config
from sam3_lora.data.sources import resolve_data_splits
from sam3_lora.data.transforms import build_transforms
from sam3_lora.data.vocabulary import load_negative_vocabulary
from sam3_lora.errors import ConfigError
from sam3_lora.models import LoadedModel
from sam3_lora.tasks.concept.checkpointing import enable_activation_checkpointing
from sam3_lora.tasks.concept.feature_cache import VisionFeatureCache
from sam3_lora.tasks.concept.finetune import describe_mode, group_builder, prepare_network
from sam3_lora.tasks.concept.loss import LossWeights, Sam3ConceptLoss
from sam3_lora.tasks.concept.module import ConceptModel
from sam3_lora.tasks.concept.samples import ConceptDataset
from sam3_lora.tasks.concept.spec import PIXEL_MEAN, PIXEL_STD
from sam3_lora.tasks.concept.task import ConceptTask
from sam3_lora.tasks.spec import TaskRecipe

logger = logging.getLogger(__name__)

SMALL_RESOLUTION = 512  # below it, Meta's random down-scaling is warned about


def model_resolution(loaded: LoadedModel, config: Config) -> int:
    """``data.resolution``, else the model's own input size."""
    return config.data.resolution or int(loaded.model.config.vision_config.image_size)


def build_concept_datasets(
    config: Config, resolution: int
) -> tuple[ConceptDataset, ConceptDataset | None]:
    """The training and validation concept datasets of ``config`` at ``resolution``."""
    data = config.data
    if data.augment and resolution < SMALL_RESOLUTION:
        low, high = data.scale_range
        logger.warning(
            "data.augment shrinks training images to %.2f-%.2f of %d px; at this small "
            "resolution objects may fall below one patch (the tiny SAM3 learns nothing then). "
            "Consider data.augment: false or a narrower data.scale_range.",
            low,
            high,
            resolution,
        )
    train_coco, valid_coco = resolve_data_splits(config)
    vocabulary = load_negative_vocabulary(data.negative_prompts)
    common = {
        "max_prompts_per_image": data.max_prompts_per_image,
        "num_negative_prompts": data.num_negative_prompts,
        "negative_vocabulary": vocabulary,
        "seed": config.training.seed,
    }
    normalisation = {"pixel_mean": PIXEL_MEAN, "pixel_std": PIXEL_STD}
    train = ConceptDataset(
        train_coco,
        build_transforms(
            resolution,
            train=data.augment,
            scale_range=data.scale_range,
            horizontal_flip=data.horizontal_flip,
            **normalisation,
        ),
        train=True,
        **common,
    )
    valid = None
    if valid_coco is not None:
        valid = ConceptDataset(
            valid_coco,
            build_transforms(resolution, train=False, **normalisation),
            train=False,
            **common,
        )
    return train, valid


def vision_feature_cache(config: Config, network: torch.nn.Module) -> VisionFeatureCache | None:
    """The cache of ``training.cache_vision_features``; a config error when the vision features
    change between epochs (trained vision encoder, augmentation)."""
    if not config.training.cache_vision_features:
        return None
    trained = [
        name
        for name, p in network.named_parameters()
        if p.requires_grad and ".vision_encoder." in f".{name}"
    ]
    if trained:
        raise ConfigError(
            "training.cache_vision_features needs a frozen vision encoder, but "
            f"{len(trained)} of its parameters are trained (e.g. {trained[0]}). Set "
            "lora.apply_to_vision_encoder: false (LoRA) or add vision_encoder to "
            "finetune.freeze (full mode), or turn the cache off."
        )
    if config.data.augment or config.data.horizontal_flip:
        raise ConfigError(
            "training.cache_vision_features reuses the first epoch's features, but data.augment "
            "or data.horizontal_flip changes the images every epoch. Set both to false, or turn "
            "the cache off."
        )
    resolution = config.data.resolution
    return VisionFeatureCache(transform_key=("resize", resolution))


def build_concept_task(config: Config, loaded: LoadedModel) -> ConceptTask:
    """The concept task of ``config`` on the loaded base model: LoRA injected
    (``finetune.mode: lora``) or the weights made trainable (``full``), activation
    checkpointing on when ``training.gradient_checkpointing`` says so."""
    network = prepare_network(loaded.model, config)
    if config.training.gradient_checkpointing:
        enable_activation_checkpointing(network)
    weights = LossWeights(**config.loss.model_dump(exclude={"type"}))
    cache = vision_feature_cache(config, network)
    # `sam3-size` (meta device) has no processor: its task reports groups but cannot run.
    tokenizer = loaded.processor.tokenizer if loaded.processor is not None else None
    return ConceptTask(
        ConceptModel(network, tokenizer, cache),
        Sam3ConceptLoss(weights),
        score_threshold=config.evaluation.score_threshold,
        mask_threshold=config.evaluation.mask_threshold,
        groups=group_builder(network, config),
        processor=loaded.processor,
    )


def build_concept_recipe(config: Config, loaded: LoadedModel) -> TaskRecipe:
    """The concept task and its datasets for ``sam3-lora train``."""
    task = build_concept_task(config, loaded)
    resolution = model_resolution(loaded, config)
    train, valid = build_concept_datasets(config, resolution)
    description = (
        f"{describe_mode(config)}; {len(train)} training images, "
        f"{len(valid) if valid else 0} validation images, "
        f"{len(train.coco.categories)} categories, resolution {resolution}"
    )
    return TaskRecipe(task, train, valid, description)
