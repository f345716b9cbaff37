"""Concept vocabularies: the text files of concepts used as hard-negative prompts."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from sam3_lora.errors import DatasetError


def load_negative_vocabulary(path: str | Path | None = None) -> list[str]:
    """Concepts for hard-negative prompts: one per line, ``#`` comments and blanks skipped."""
    if path is None:
        text = resources.files("sam3_lora.resources").joinpath("negative_prompts.txt").read_text()
        source = "the built-in vocabulary"
    else:
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise DatasetError(f"data.negative_prompts: cannot read {file}: {error}") from None
        source = str(file)
    words = [line.strip() for line in text.splitlines()]
    words = [w for w in words if w and not w.startswith("#")]
    if not words:
        raise DatasetError(f"{source} holds no negative prompts (one concept per line)")
    return list(dict.fromkeys(words))
