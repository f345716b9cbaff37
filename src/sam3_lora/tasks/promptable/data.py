"""The COCO splits of a promptable config: the ``data`` section's folders, or a synthetic dataset
(the shapes of :mod:`sam3_lora.data.synthetic`, or the steel-surface defects of
:mod:`sam3_lora.data.synthetic_steel`, ``data.synthetic.style: steel``), generated on first use."""

from __future__ import annotations

from pathlib import Path

from sam3_lora.config import Config
from sam3_lora.data.coco import CocoDataset
from sam3_lora.data.sources import open_config_split, resolve_data_splits
from sam3_lora.errors import ConfigError


def steel_root(config: Config) -> Path | None:
    """The steel-defect dataset the config asks for (generated on first use), or None."""
    synthetic = config.data.synthetic
    if synthetic is None or synthetic.style != "steel":
        return None
    from sam3_lora.data.synthetic_steel import ensure_steel_dataset

    return ensure_steel_dataset(
        synthetic.output_dir,
        num_train=synthetic.num_train,
        num_val=synthetic.num_val,
        seed=synthetic.seed,
        image_size=synthetic.image_size,
    )


def resolve_promptable_splits(config: Config) -> tuple[CocoDataset, CocoDataset | None]:
    """Train / valid datasets of ``config`` (see :func:`sam3_lora.data.sources
    .resolve_data_splits`; ``style: steel`` is generated here)."""
    root = steel_root(config) if config.data.train is None else None
    if root is not None:
        return CocoDataset.from_split_dir(root / "train"), CocoDataset.from_split_dir(
            root / "valid"
        )
    return resolve_data_splits(config)


def open_promptable_split(config: Config, split: str) -> CocoDataset:
    """The COCO dataset of ``data.<split>`` (the synthetic dataset's when the config has one)."""
    if split not in ("train", "valid", "test"):
        raise ConfigError(f"--split {split!r}: choose train, valid or test")
    if getattr(config.data, split) is None and split != "test":
        root = steel_root(config)
        if root is not None:
            return CocoDataset.from_split_dir(root / split)
    return open_config_split(config, split)
