"""Concept vocabularies: the text files of concepts used as hard-negative prompts.

A concept is never a negative of a dataset when it shares a word with one of its category names,
prompts or synonyms, compared lower-cased and singularised: ``wheel`` is not a negative of a
dataset with ``steering wheel``, nor ``cars`` of one with ``car`` (the model would be told,
image after image, that there is no wheel in pictures of steering wheels).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from sam3_lora.errors import DatasetError

#: Words that say nothing about the concept ("a cat", "piece of wood"): never shared.
STOP_WORDS = frozenset((
    "a", "an", "the", "of", "and", "or", "with", "without", "in", "on", "at", "to", "for",
    "from", "by", "its", "their", "this", "that",
))  # fmt: skip
_IRREGULAR = {
    "people": "person",
    "men": "man",
    "women": "woman",
    "children": "child",
    "mice": "mouse",
    "teeth": "tooth",
    "feet": "foot",
    "geese": "goose",
    "knives": "knife",
    "leaves": "leaf",
    "shelves": "shelf",
    "wolves": "wolf",
    "halves": "half",
    "loaves": "loaf",
    "calves": "calf",
    "scarves": "scarf",
    "lives": "life",
    "wives": "wife",
    "dice": "die",
    "oxen": "ox",
    "buses": "bus",
    "series": "series",
    "species": "species",
}
_UNCHANGED_ENDINGS = ("ss", "us", "is", "ous")
_ES_ENDINGS = ("ches", "shes", "sses", "xes", "zes")
_WORD = re.compile(r"[^\W_]+")


def singular(word: str) -> str:
    """A lower-cased English word in the singular, by rule (``boxes`` -> ``box``,
    ``berries`` -> ``berry``, ``people`` -> ``person``, ``glass`` and ``bus`` unchanged)."""
    word = word.lower()
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) <= 3 or not word.endswith("s") or word.endswith(_UNCHANGED_ENDINGS):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(_ES_ENDINGS):
        return word[:-2]
    return word[:-1]


def concept_words(text: str) -> frozenset[str]:
    """The singular, lower-cased words of a concept, stop words left out."""
    words = {singular(w) for w in _WORD.findall(text.lower())}
    return frozenset(words - STOP_WORDS)


def exclude_overlapping(
    vocabulary: Iterable[str], taken: Iterable[str]
) -> tuple[list[str], dict[str, str]]:
    """Split ``vocabulary`` into the concepts that share no word with any ``taken`` text (the
    dataset's category names, prompts and synonyms) and the excluded ones.

    Returns:
        ``(kept, excluded)``: the kept concepts in order, and excluded concept -> the taken text
        it shares a word with.
    """
    taken_words: dict[str, str] = {}
    for text in taken:
        for word in sorted(concept_words(text)):
            taken_words.setdefault(word, text)
    kept, excluded = [], {}
    for concept in vocabulary:
        shared = sorted(concept_words(concept) & taken_words.keys())
        if shared:
            excluded[concept] = taken_words[shared[0]]
        elif concept.strip():
            kept.append(concept)
    return kept, excluded


def category_texts(categories: Iterable[object]) -> list[str]:
    """Every text a dataset prompts with: each category's name, prompt and synonyms."""
    return [
        text
        for category in categories
        for text in (category.name, category.prompt, *category.synonyms)  # type: ignore[attr-defined]
    ]


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
