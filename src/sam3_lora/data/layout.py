"""The dataset folder skeleton: ``train/``, ``valid/``, ``test/`` and a short README."""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "valid", "test")

README = """# Dataset for sam3-lora

Each split folder holds its images and one `_annotations.coco.json` (COCO instances, the
Roboflow export layout):

    train/  _annotations.coco.json  img001.jpg  ...
    valid/  _annotations.coco.json  ...
    test/   _annotations.coco.json  ...

`file_name` in the JSON is relative to the split folder. Categories may carry a text `prompt`
and `synonyms` used as prompts. Fill the splits with a converter, then check them:

    sam3-lora data coco    --coco_json F --images_dir D --output_dir {root} --split train
    sam3-lora data yolo    --yolo_dir D --output_dir {root}
    sam3-lora data split   --data_dir {root} --ratios 0.8 0.1 0.1 --seed 0
    sam3-lora data validate --data_dir {root}
"""


def create_layout(output_dir: str | Path) -> list[Path]:
    """Create the split folders and README (existing files are left alone); return new paths."""
    root = Path(output_dir)
    created = []
    for name in SPLIT_NAMES:
        folder = root / name
        if not folder.exists():
            folder.mkdir(parents=True)
            created.append(folder)
    readme = root / "README.md"
    if not readme.exists():
        readme.write_text(README.format(root=root.as_posix()), encoding="utf-8")
        created.append(readme)
    logger.info("dataset skeleton at %s (%d new entries)", root, len(created))
    return created
