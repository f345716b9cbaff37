"""SAM3 LoRA training from a config: model + adapter + data + concept task -> the trainer.

``SAM3TrainerNative("configs/balanced.yaml").train()`` is the Python face of
``sam3-lora train --config configs/balanced.yaml``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from rich.console import Console

from sam3_lora.config import Config, SplitSettings, load_config
from sam3_lora.data.coco import CocoDataset
from sam3_lora.data.prompts import ConceptDataset, collate_concept_samples, load_negative_vocabulary
from sam3_lora.data.transforms import build_transforms
from sam3_lora.engine.trainer import Trainer
from sam3_lora.errors import ConfigError
from sam3_lora.lora import apply_lora_to_model, parameter_report, parameter_table
from sam3_lora.models import LoadedModel, load_sam3
from sam3_lora.tasks.concept import ConceptTask
from sam3_lora.tasks.losses import LossWeights, Sam3ConceptLoss

logger = logging.getLogger(__name__)

SMALL_RESOLUTION = 512  # below it, Meta's random down-scaling is warned about


def open_split(split: SplitSettings | None, name: str) -> CocoDataset | None:
    """The COCO dataset of one ``data.<name>`` entry (a split folder or explicit files)."""
    if split is None:
        return None
    if split.dir:
        return CocoDataset.from_split_dir(split.dir)
    if split.annotation_file:
        return CocoDataset(split.annotation_file, split.images_dir)
    raise ConfigError(f"data.{name}: give `dir` (a split folder) or `annotation_file`")


def synthetic_root(config: Config) -> Path | None:
    """The synthetic dataset the config asks for (generated on first use), or None."""
    synthetic = config.data.synthetic
    if synthetic is None:
        return None
    from sam3_lora.data.synthetic import ensure_shapes_dataset

    return ensure_shapes_dataset(
        synthetic.output_dir,
        num_train=synthetic.num_train,
        num_val=synthetic.num_val,
        seed=synthetic.seed,
        style=synthetic.style,
        size_range=synthetic.size_range,
        image_size=synthetic.image_size,
        distractors=tuple(synthetic.distractors),
    )


def resolve_data_splits(config: Config) -> tuple[CocoDataset, CocoDataset | None]:
    """Train / valid datasets; generates the synthetic dataset first when the config asks."""
    data = config.data
    if data.synthetic is not None and data.train is None:
        root = synthetic_root(config)
        return CocoDataset.from_split_dir(root / "train"), CocoDataset.from_split_dir(
            root / "valid"
        )
    train = open_split(data.train, "train")
    if train is None:
        raise ConfigError(
            f"{config.source}: data.train is not set; point it at a split folder "
            "(images + _annotations.coco.json, see `sam3-lora data --help`)"
        )
    return train, open_split(data.valid, "valid")


def model_resolution(loaded: LoadedModel, config: Config) -> int:
    return config.data.resolution or int(loaded.model.config.vision_config.image_size)


def build_concept_datasets(
    config: Config, resolution: int
) -> tuple[ConceptDataset, ConceptDataset | None]:
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
    train = ConceptDataset(
        train_coco,
        build_transforms(
            resolution,
            train=data.augment,
            scale_range=data.scale_range,
            horizontal_flip=data.horizontal_flip,
        ),
        train=True,
        max_prompts_per_image=data.max_prompts_per_image,
        num_negative_prompts=data.num_negative_prompts,
        negative_vocabulary=vocabulary,
        seed=config.training.seed,
    )
    valid = None
    if valid_coco is not None:
        valid = ConceptDataset(
            valid_coco,
            build_transforms(resolution, train=False),
            train=False,
            max_prompts_per_image=data.max_prompts_per_image,
            num_negative_prompts=data.num_negative_prompts,
            negative_vocabulary=vocabulary,
            seed=config.training.seed,
        )
    return train, valid


def build_concept_task(config: Config) -> tuple[ConceptTask, LoadedModel]:
    """Load the base model, inject LoRA and wrap both in the concept task."""
    loaded = load_sam3(config.model.name_or_path)
    model = apply_lora_to_model(loaded.model, config.lora)
    weights = LossWeights(**config.loss.model_dump())
    task = ConceptTask(model, loaded.processor.tokenizer, Sam3ConceptLoss(weights))
    return task, loaded


class SAM3TrainerNative:
    """Train a SAM3 LoRA adapter as a config says (the SAM3-LoRA name for it).

    Args:
        config: a YAML path, a preset name, or a :class:`Config`.
        overrides: dotted keys -> values applied on top of the file.
    """

    def __init__(self, config: str | Path | Config, overrides: dict[str, Any] | None = None):
        self.config = config if isinstance(config, Config) else load_config(config, overrides)
        self.console = Console()

    def train(self, resume: str | Path | bool | None = None) -> dict[str, Any]:
        """Train; ``resume=True`` continues from the latest checkpoint, a path from that one."""
        config = self.config
        task, loaded = build_concept_task(config)
        resolution = model_resolution(loaded, config)
        train_dataset, valid_dataset = build_concept_datasets(config, resolution)
        report = parameter_report(task.model)
        self.console.print(parameter_table(report, title=f"LoRA on {loaded.source}"))
        self.console.print(
            f"{len(train_dataset)} training images, "
            f"{len(valid_dataset) if valid_dataset else 0} validation images, "
            f"{len(train_dataset.coco.categories)} categories, resolution {resolution}"
        )
        output_dir = Path(config.output.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")
        trainer = Trainer(config, task, train_dataset, valid_dataset, collate_concept_samples)
        summary = trainer.train(resume=resume)
        self.console.print(trainer.summary_table)
        if trainer.comparison_table is not None:
            self.console.print(trainer.comparison_table)
        self.trainer = trainer
        return summary
