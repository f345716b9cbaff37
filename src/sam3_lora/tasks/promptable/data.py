"""The COCO splits of a promptable config: the ``data`` section's folders, or a synthetic dataset
(any ``data.synthetic.style``, the steel defects of the SAM2 quick start included), generated on
first use by :mod:`sam3_lora.data.sources`."""

from __future__ import annotations

from sam3_lora.config import Config
from sam3_lora.data.coco import CocoDataset
from sam3_lora.data.sources import open_config_split, resolve_data_splits
from sam3_lora.errors import ConfigError


def resolve_promptable_splits(config: Config) -> tuple[CocoDataset, CocoDataset | None]:
    """Train / valid datasets of ``config`` (see :func:`sam3_lora.data.sources
    .resolve_data_splits`)."""
    return resolve_data_splits(config)


def open_promptable_split(config: Config, split: str) -> CocoDataset:
    """The COCO dataset of ``data.<split>`` (the synthetic dataset's when the config has one)."""
    if split not in ("train", "valid", "test"):
        raise ConfigError(f"--split {split!r}: choose train, valid or test")
    return open_config_split(config, split)
