"""Where the package's shipped files are: presets and tiny models, found as package data.

``configs/`` and ``assets/`` at the repository root are installed as the packages
``sam3_lora.presets`` and ``sam3_lora.assets`` (see ``pyproject.toml``), so a plain
``pip install .`` finds them without the source tree.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def presets_dir() -> Path:
    """The folder of the shipped config presets (``balanced.yaml`` ...)."""
    return Path(str(resources.files("sam3_lora.presets")))


def asset_dir(name: str) -> Path:
    """The folder of a shipped asset, e.g. ``asset_dir("tiny-sam3")``."""
    return Path(str(resources.files("sam3_lora.assets").joinpath(name)))
