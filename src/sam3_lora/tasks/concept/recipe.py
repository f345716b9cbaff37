"""Build the concept task and its datasets from a config (what ``sam3-lora train`` runs)."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from peft import PeftModel

from sam3_lora.compile import compile_vision_encoder
from sam3_lora.config import Config
from sam3_lora.data.negative_cache import NegativeCheck
from sam3_lora.data.sources import resolve_data_splits
from sam3_lora.data.transforms import build_transforms
from sam3_lora.data.vocabulary import load_negative_vocabulary
from sam3_lora.errors import ConfigError
from sam3_lora.frozen_weights import store_frozen_weights_for_training
from sam3_lora.models import LoadedModel
from sam3_lora.tasks.concept.checkpointing import enable_activation_checkpointing
from sam3_lora.tasks.concept.feature_cache import VisionFeatureCache
from sam3_lora.tasks.concept.finetune import group_builder, prepare_network
from sam3_lora.tasks.concept.loss import LossWeights, Sam3ConceptLoss
from sam3_lora.tasks.concept.module import ConceptModel
from sam3_lora.tasks.concept.negatives import verify_negatives
from sam3_lora.tasks.concept.samples import ConceptDataset
from sam3_lora.tasks.concept.spec import PIXEL_MEAN, PIXEL_STD
from sam3_lora.tasks.concept.task import ConceptTask
from sam3_lora.tasks.finetune import describe_mode
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
    settings = config.training
    transform = ("resize", config.data.resolution)
    gigabytes = settings.feature_cache_max_gb
    budget = None if gigabytes is None else int(gigabytes * 2**30)
    if settings.feature_cache_storage == "disk":
        directory = Path(config.output.output_dir) / "feature-cache" / _cache_name(config)
        return VisionFeatureCache(transform, max_bytes=budget, directory=directory)
    if budget is None:  # half the memory free now, shared by this machine's processes
        import psutil

        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        budget = psutil.virtual_memory().available // (2 * processes)
    return VisionFeatureCache(transform, max_bytes=budget)


def _cache_name(config: Config) -> str:
    """Names the disk cache of one (model, training split, resolution, precision): another
    model, an edited annotation file or another precision never reads these features."""
    split = config.data.train
    places = [] if split is None else [split.dir, split.annotation_file, split.images_dir]
    stamps = []
    for place in filter(None, places):
        path = Path(place).resolve()
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        stamps += [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
    synthetic = config.data.synthetic.model_dump() if config.data.synthetic else None
    precision = (config.training.mixed_precision, config.model.frozen_weights_dtype)
    identity = repr(
        (config.model.name_or_path, stamps, synthetic, config.data.resolution, precision)
    )
    return hashlib.sha1(identity.encode()).hexdigest()[:12]


def build_concept_task(config: Config, loaded: LoadedModel) -> ConceptTask:
    """The concept task of ``config`` on the loaded base model: LoRA injected
    (``finetune.mode: lora``) or the weights made trainable (``full``), activation
    checkpointing on when ``training.gradient_checkpointing`` says so, the vision encoder
    compiled when ``training.compile`` does."""
    network = prepare_network(loaded.model, config)
    if config.training.gradient_checkpointing:
        enable_activation_checkpointing(network)
    if config.training.compile:
        compile_vision_encoder(network)
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


def verify_dataset_negatives(
    config: Config,
    loaded: LoadedModel,
    resolution: int,
    datasets: list[ConceptDataset],
    draw: bool = True,
) -> list[NegativeCheck]:
    """The base model checks each dataset's candidate negatives (cached); with ``draw`` each
    dataset then draws an image's negatives among its verified ones only. Run before the
    adapter is injected."""
    data = config.data
    model = ConceptModel(loaded.model, loaded.processor.tokenizer)
    checks = []
    for dataset in datasets:
        check = verify_negatives(
            dataset.coco,
            model,
            dataset.negative_vocabulary,
            resolution=resolution,
            pool_size=data.negative_verify_pool,
            seed=config.training.seed,
            threshold=data.negative_verify_threshold,
            batch_size=config.evaluation.batch_size,
            num_workers=config.training.num_workers,
            model_name=config.model.name_or_path,
            timeout_s=config.training.distributed_timeout_s,
        )
        if draw:
            dataset.set_negative_candidates([check.negatives(i.id) for i in dataset.coco.images])
        logger.info("%s", check.summary())
        checks.append(check)
    return checks


def build_concept_recipe(config: Config, loaded: LoadedModel) -> TaskRecipe:
    """The concept task and its datasets for ``sam3-lora train``: with ``data.verify_negatives``
    the base model verifies the negatives first; when the task trains an adapter, validation
    also prompts the concepts the base finds on each image (retention, ``val/retention``).
    Under bf16 / fp16 mixed precision a LoRA run's frozen linear / conv weights are stored in
    the compute dtype (:mod:`sam3_lora.frozen_weights`; ``model.frozen_weights_dtype``)."""
    resolution = model_resolution(loaded, config)
    train, valid = build_concept_datasets(config, resolution)
    verify = config.data.verify_negatives and config.data.num_negative_prompts > 0
    retention = config.evaluation.retention_prompts
    checked = [train] if verify else []
    if valid is not None and (verify or retention):
        checked.append(valid)
    checks = verify_dataset_negatives(config, loaded, resolution, checked, draw=verify)
    task = build_concept_task(config, loaded)
    store_frozen_weights_for_training(task.network, config)
    if retention and valid is not None and isinstance(task.network, PeftModel):
        check = checks[-1]  # the base to compare with: the adapter disabled
        valid.set_retention_prompts([check.present(i.id)[:retention] for i in valid.coco.images])
    description = (
        f"{describe_mode(config)}; {len(train)} training images, "
        f"{len(valid) if valid else 0} validation images, "
        f"{len(train.coco.categories)} categories, resolution {resolution}"
    )
    cache = task.model.feature_cache
    if cache is not None:
        budget = cache.max_bytes
        limit = "no limit" if budget is None else f"at most {budget / 2**30:.1f} GiB"
        where = f" in {cache.directory}" if cache.directory is not None else ""
        description += f"\nvision-feature cache: {cache.storage}{where}, {limit}"
    for check, dataset in zip(checks, checked, strict=True):
        split = "training" if dataset is train else "validation"
        timing = "cached" if check.from_cache else f"{check.seconds:.1f} s"
        description += f"\n{split} {check.summary()} [{timing}]"
    return TaskRecipe(task, train, valid, description)
