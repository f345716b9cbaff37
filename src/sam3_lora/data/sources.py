"""The COCO datasets a config's ``data`` section points to (split folders, files, synthetic)."""

from __future__ import annotations

from pathlib import Path

from sam3_lora.config import Config, SplitSettings
from sam3_lora.data.coco import CocoDataset
from sam3_lora.errors import ConfigError


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


def open_config_split(config: Config, split: str) -> CocoDataset:
    """The COCO dataset of ``data.<split>`` (the synthetic dataset's when the config has one)."""
    if split not in ("train", "valid", "test"):
        raise ConfigError(f"--split {split!r}: choose train, valid or test")
    settings = getattr(config.data, split)
    if settings is None and config.data.synthetic is not None and split != "test":
        return CocoDataset.from_split_dir(synthetic_root(config) / split)
    coco = open_split(settings, split)
    if coco is None:
        raise ConfigError(
            f"{config.source}: data.{split} is not set; point it at a split folder to evaluate on"
        )
    return coco
