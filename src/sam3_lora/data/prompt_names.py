"""Category names as SAM3 prompts: which ones are not text a model can ground.

SAM3 finds objects from a short noun phrase. Names exported by tools are often ids instead:
``0``, ``class_3``, ``defect_type_2``, ``_background_``, or near-duplicates such as ``Hard hat``
and ``hard_hat``. Such a category needs a ``prompt`` (and ``synonyms``) in the COCO file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# Words that name "a class" rather than a thing; followed by a number they are a placeholder.
GENERIC_WORDS = frozenset(
    {
        "class", "cls", "category", "label", "lbl", "type", "kind", "object", "obj", "id",
        "item", "defect", "thing", "group", "region", "part", "target", "instance", "sample",
        "no", "num", "number", "code", "c", "l", "t", "k",
    }
)  # fmt: skip
_TOKENS = re.compile(r"[a-z]+|\d+")
_PLACEHOLDER = re.compile(r"^_+[a-z]+(?:_[a-z]+)*_+$")


@dataclass(frozen=True)
class NameProblem:
    """Why the prompt text of the categories ``category_ids`` cannot be grounded."""

    category_ids: tuple[int, ...]
    texts: tuple[str, ...]
    reason: str


def ungroundable_reason(text: str) -> str | None:
    """Why ``text`` is not a phrase a model can ground, or None when it reads as words."""
    lowered = text.strip().lower()
    if _PLACEHOLDER.match(lowered):
        return "a tool's placeholder, not an object class"
    tokens = _TOKENS.findall(lowered)
    words = [t for t in tokens if not t.isdigit()]
    if not words:
        return "a number or code, not words"
    if tokens[-1].isdigit() and all(w in GENERIC_WORDS for w in words):
        return "a numbered placeholder (class + number)"
    if len(words) == 1 and len(words[0]) == 1:
        return "a single letter"
    return None


def name_problems(categories: Iterable[tuple[int, str]]) -> list[NameProblem]:
    """Problems of ``(category id, prompt text)`` pairs: ungroundable texts and near-duplicates.

    Near-duplicates differ only in case, spacing or punctuation (``Hard hat`` / ``hard_hat``), or
    only in a trailing number (``defect_1`` / ``defect_3``), which a text prompt cannot tell apart.
    Exact duplicates are left to the caller (they are reported as duplicated names).
    """
    entries = list(categories)
    problems = [
        NameProblem((category_id,), (text,), reason)
        for category_id, text in entries
        if (reason := ungroundable_reason(text))
    ]
    flagged = {p.category_ids[0] for p in problems}
    for key_of, reason in (
        (_spelling_key, "differ only in case or spacing: the model reads them as one concept"),
        (_numberless_key, "differ only in a trailing number, which a text prompt cannot tell"),
    ):
        groups: dict[str, list[tuple[int, str]]] = {}
        for category_id, text in entries:
            if category_id not in flagged:
                groups.setdefault(key_of(text), []).append((category_id, text))
        for members in groups.values():
            if len(members) > 1 and len({text for _, text in members}) > 1:
                ids = tuple(category_id for category_id, _ in members)
                problems.append(NameProblem(ids, tuple(text for _, text in members), reason))
                flagged.update(ids)
    return problems


def _spelling_key(text: str) -> str:
    return "".join(_TOKENS.findall(text.lower()))


def _numberless_key(text: str) -> str:
    tokens = _TOKENS.findall(text.lower())
    while tokens and tokens[-1].isdigit():
        tokens.pop()
    return " ".join(tokens) + ("#" if tokens != _TOKENS.findall(text.lower()) else "")
