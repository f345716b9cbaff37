"""The datasets a training config points to: its ``data.train`` / ``valid`` / ``test`` splits.

``resolve_data_splits`` opens them as training does (generating the synthetic dataset when the
config asks for it); ``split_sources`` only says where each split's files are, so that
``sam3-lora data validate --config`` can check them before a GPU job starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sam3_lora.config import Config, SplitSettings
from sam3_lora.data.coco import ANNOTATION_FILE_NAMES, CocoDataset, find_annotation_file
from sam3_lora.errors import ConfigError, DatasetError
from sam3_lora.launch import process_state

SPLIT_KEYS = ("train", "valid", "test")


@dataclass
class SplitSource:
    """Where one split of a config lives; ``problem`` says why it cannot be opened."""

    name: str
    annotation_file: Path | None
    images_dir: Path | None = None
    problem: str | None = None
    note: str | None = None

    @property
    def label(self) -> Path:
        """What to call the split in a report: its file, or the config key."""
        return self.annotation_file or Path(f"data.{self.name}")


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
    """The synthetic dataset the config asks for (generated on first use), or None.

    Every style of ``data.synthetic.style`` is handled: ``plain`` / ``shifted`` shapes
    (:mod:`sam3_lora.data.synthetic`) and ``steel`` defects (:mod:`sam3_lora.data.synthetic_steel`).
    In a distributed launch the main process generates it while the others wait, then they
    reuse it (two processes writing one folder would read each other's half-written files).
    """
    if config.data.synthetic is None:
        return None
    state = process_state(config.training.distributed_timeout_s)
    if state is None:
        return _ensure_synthetic(config)
    with state.main_process_first():
        return _ensure_synthetic(config)


def _ensure_synthetic(config: Config) -> Path:
    synthetic = config.data.synthetic
    common = {
        "num_train": synthetic.num_train,
        "num_val": synthetic.num_val,
        "seed": synthetic.seed,
        "image_size": synthetic.image_size,
    }
    if synthetic.style == "steel":
        shape_only = [k for k in ("size_range", "distractors") if getattr(synthetic, k)]
        if shape_only:
            raise ConfigError(
                f"{config.source}: data.synthetic.{shape_only[0]} applies to the shapes styles "
                "(plain, shifted), not to style steel; remove it"
            )
        from sam3_lora.data.synthetic_steel import ensure_steel_dataset

        return ensure_steel_dataset(synthetic.output_dir, **common)
    from sam3_lora.data.synthetic import ensure_shapes_dataset

    return ensure_shapes_dataset(
        synthetic.output_dir,
        style=synthetic.style,
        size_range=synthetic.size_range,
        distractors=tuple(synthetic.distractors),
        **common,
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


def split_sources(config: Config) -> list[SplitSource]:
    """Every split the config names, with its files (nothing is opened or generated)."""
    data = config.data
    if data.synthetic is not None and data.train is None:
        root = Path(data.synthetic.output_dir)
        sources = []
        for name in ("train", "valid"):
            annotation_file = root / name / ANNOTATION_FILE_NAMES[0]
            if annotation_file.is_file():
                sources.append(SplitSource(name, annotation_file, note="synthetic"))
            else:
                note = (
                    f"synthetic {data.synthetic.style} dataset, generated at {root} by the first "
                    "`sam3-lora train`"
                )
                sources.append(SplitSource(name, None, note=note))
        return sources
    if data.train is None:
        raise ConfigError(
            f"{config.source}: data.train is not set; point it at a split folder "
            "(images + _annotations.coco.json, see `sam3-lora data --help`)"
        )
    sources = []
    for name in SPLIT_KEYS:
        split = getattr(data, name)
        if split is not None:
            sources.append(_source(split, name))
    return sources


def _source(split: SplitSettings, name: str) -> SplitSource:
    if split.dir:
        try:
            return SplitSource(name, find_annotation_file(split.dir))
        except DatasetError as error:
            return SplitSource(name, None, problem=f"data.{name}: {error}")
    if split.annotation_file:
        images_dir = Path(split.images_dir) if split.images_dir else None
        return SplitSource(name, Path(split.annotation_file), images_dir)
    return SplitSource(name, None, problem=f"data.{name}: give `dir` or `annotation_file`")


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
