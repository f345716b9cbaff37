"""A copy of a COCO split that annotates some of its categories only.

The objects of the other categories stay in the pictures, unannotated: the situation hard
negatives must not make worse (a ``road`` negative on pictures of roads). Used by the prompt-
fidelity tests and ``benchmarks/bench_prompt_fidelity.py`` on the synthetic shapes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sam3_lora.data.coco import find_annotation_file
from sam3_lora.data.jsonio import read_json, write_json
from sam3_lora.errors import DatasetError


def keep_categories(split_dir: str | Path, names: list[str], output_dir: str | Path) -> Path:
    """Write ``output_dir`` (images linked or copied, ``_annotations.coco.json``) with only the
    categories ``names`` of the split at ``split_dir`` and their annotations.

    Returns:
        The new annotation file.

    Raises:
        DatasetError: a name is not a category of the split.
    """
    source = find_annotation_file(split_dir)
    data = read_json(source)
    known = {c["name"]: c for c in data["categories"]}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise DatasetError(
            f"{source}: no category {unknown[0]!r}; its categories are {', '.join(known)}"
        )
    ids = {known[n]["id"] for n in names}
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for image in data["images"]:
        target = output_dir / image["file_name"]
        if not target.exists():
            try:
                os.link(source.parent / image["file_name"], target)
            except OSError:
                shutil.copy2(source.parent / image["file_name"], target)
    subset = {
        **data,
        "categories": [c for c in data["categories"] if c["id"] in ids],
        "annotations": [a for a in data["annotations"] if a["category_id"] in ids],
    }
    return write_json(output_dir / "_annotations.coco.json", subset)


def images_with(split_dir: str | Path, name: str) -> set[int]:
    """Ids of the images of a split holding at least one ``name`` object."""
    data = read_json(find_annotation_file(split_dir))
    ids = {c["id"] for c in data["categories"] if c["name"] == name}
    return {a["image_id"] for a in data["annotations"] if a["category_id"] in ids}
