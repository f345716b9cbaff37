"""Exceptions for user mistakes: each names the file / field / value and the fix.

The CLI turns any :class:`Sam3LoraError` into one red line and a non-zero exit code;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class Sam3LoraError(Exception):
    """Base class for errors caused by user input (config, data, model files)."""


class ConfigError(Sam3LoraError):
    """A config file or override is invalid."""


class DatasetError(Sam3LoraError):
    """An annotation file, image or dataset folder is invalid."""


class ModelLoadError(Sam3LoraError):
    """A base model, processor or checkpoint cannot be loaded."""


class AdapterError(Sam3LoraError):
    """An adapter is missing, malformed or belongs to another base model."""


class CheckpointError(Sam3LoraError):
    """A training checkpoint is missing, incomplete or does not match the model."""


class PromptError(Sam3LoraError):
    """A prompt given by a user is empty or invalid (a text, a box, a click)."""
