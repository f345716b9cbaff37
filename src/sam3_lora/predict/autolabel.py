"""Predictions as files: per-image JSON (RLE masks) and one COCO dataset for auto-labelling.

Label a folder with the model, correct the result by hand in CVAT or Label Studio, fine-tune
again: :class:`CocoPredictionWriter` collects :meth:`SAM3LoRAInference.predict` dicts into a
COCO file that ``sam3-lora data validate`` accepts. Image ``file_name`` entries are relative to
the JSON's folder; images outside it are copied next to the JSON so that the folder is a
self-contained dataset. Segmentations are compressed RLE (exact) or polygons (what most
annotation tools edit); ``iscrowd`` is 0 either way and each annotation keeps its ``score``.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm.auto import tqdm

from sam3_lora.data.coco import segmentation_box_xyxy
from sam3_lora.data.images import IMAGE_EXTENSIONS, is_image_file
from sam3_lora.data.jsonio import write_json
from sam3_lora.errors import DatasetError

if TYPE_CHECKING:
    from sam3_lora.predict.inference import ConceptPrompt, SAM3LoRAInference

logger = logging.getLogger(__name__)

SEGMENTATION_FORMATS = ("rle", "polygon")


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """A bool ``[H, W]`` mask as compressed COCO RLE with a JSON-ready ``counts`` string."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def mask_to_polygons(mask: np.ndarray, min_points: int = 3) -> list[list[float]]:
    """Outer contours of a bool mask as COCO polygons ``[[x1, y1, x2, y2, ...], ...]``.

    Contours follow pixel edges (the mask is traced at level 0.5 on a padded grid), so a
    polygon rasterises back to about the same pixels. Holes are not represented.
    """
    from contourpy import contour_generator

    padded = np.pad(np.asarray(mask, dtype=np.float32), 1)
    lines = contour_generator(z=padded).lines(0.5)
    polygons = []
    for line in lines:
        points = np.asarray(line, dtype=np.float64) - 1 + 0.5  # pixel centres -> pixel edges
        if len(points) > 1 and np.allclose(points[0], points[-1]):
            points = points[:-1]
        if len(points) >= min_points:
            polygons.append([round(float(v), 2) for v in points.reshape(-1)])
    return polygons


def predictions_to_json(predictions: dict[str, Any], image_name: str) -> dict[str, Any]:
    """The JSON form of a :meth:`SAM3LoRAInference.predict` dict (masks as COCO RLE)."""
    width, height = predictions["image_size"]
    return {
        "image": image_name,
        "width": width,
        "height": height,
        "prompts": predictions["prompts"],
        "presence": {k: round(float(v), 5) for k, v in predictions["presence"].items()},
        "labels": predictions["labels"],
        "scores": [round(float(s), 5) for s in predictions["scores"]],
        "boxes": [[round(float(v), 2) for v in box] for box in predictions["boxes"]],
        "masks": [encode_mask(mask) for mask in predictions["masks"]],
    }


class CocoPredictionWriter:
    """Collect predictions over many images and write them as one COCO dataset.

    Args:
        output_file: the COCO JSON to write.
        categories: category names (the prompts), ids 1..n in this order.
        segmentation: ``rle`` or ``polygon``.
    """

    def __init__(
        self, output_file: str | Path, categories: list[str], segmentation: str = "rle"
    ) -> None:
        if segmentation not in SEGMENTATION_FORMATS:
            raise DatasetError(
                f"segmentation format {segmentation!r} is not one of {SEGMENTATION_FORMATS}"
            )
        self.output_file = Path(output_file)
        if self.output_file.suffix.lower() != ".json":
            raise DatasetError(f"--save_coco {self.output_file}: the file name must end in .json")
        self.root = self.output_file.parent
        self.segmentation = segmentation
        self.category_ids = {name: i + 1 for i, name in enumerate(dict.fromkeys(categories))}
        self.data: dict[str, Any] = {
            "info": {"description": "predictions of sam3-lora predict (auto-labelling)"},
            "images": [],
            "annotations": [],
            "categories": [
                {"id": i, "name": name, "supercategory": "none"}
                for name, i in self.category_ids.items()
            ],
        }
        self.copied = 0

    def add(self, image_path: str | Path, predictions: dict[str, Any]) -> int:
        """Add one image and its predictions; returns the image id."""
        image_id = len(self.data["images"]) + 1
        width, height = predictions["image_size"]
        file_name = self._file_name(Path(image_path))
        self.data["images"].append(
            {"id": image_id, "file_name": file_name, "width": width, "height": height}
        )
        for mask, box, label, score in zip(
            predictions["masks"],
            predictions["boxes"],
            predictions["labels"],
            predictions["scores"],
            strict=True,
        ):
            self._add_annotation(image_id, mask, box, label, float(score))
        return image_id

    def _add_annotation(
        self, image_id: int, mask: np.ndarray, box: np.ndarray, label: str, score: float
    ) -> None:
        if label not in self.category_ids:
            self.category_ids[label] = len(self.category_ids) + 1
            self.data["categories"].append(
                {"id": self.category_ids[label], "name": label, "supercategory": "none"}
            )
        area = int(np.asarray(mask).sum())
        if area == 0:
            return  # a box with an empty mask: nothing to correct by hand
        segmentation: Any = encode_mask(mask)
        if self.segmentation == "polygon":
            segmentation = mask_to_polygons(mask)
            if not segmentation:
                return
        # COCO's bbox is the extent of the segmentation (the model's own box may differ).
        height, width = np.asarray(mask).shape
        x1, y1, x2, y2 = (float(v) for v in segmentation_box_xyxy(segmentation, height, width))
        self.data["annotations"].append(
            {
                "id": len(self.data["annotations"]) + 1,
                "image_id": image_id,
                "category_id": self.category_ids[label],
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                "area": area,
                "segmentation": segmentation,
                "iscrowd": 0,
                "score": round(score, 5),
            }
        )

    def _file_name(self, image_path: Path) -> str:
        """The image's path relative to the JSON's folder, copying it there when outside."""
        resolved = image_path.resolve()
        root = self.root.resolve()
        if root in resolved.parents:
            return resolved.relative_to(root).as_posix()
        target = self.root / image_path.name
        stem, suffix, count = image_path.stem, image_path.suffix, 1
        while target.exists() and target.resolve() != resolved:
            target = self.root / f"{stem}_{count}{suffix}"
            count += 1
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image_path, target)
        self.copied += 1
        return target.name

    def write(self) -> Path:
        """Write the COCO JSON; returns its path."""
        if self.copied:
            logger.info("copied %d images next to %s", self.copied, self.output_file)
        return write_json(self.output_file, self.data)


@dataclass
class PredictionRun:
    """What :func:`predict_to_files` wrote and what it could not read."""

    images: int = 0
    instances: int = 0
    outputs: list[tuple[Path, Path]] = field(default_factory=list)  # (png, json) per image
    failures: list[tuple[Path, str]] = field(default_factory=list)
    coco_file: Path | None = None
    per_label: dict[str, int] = field(default_factory=dict)


def list_images(path: str | Path) -> list[Path]:
    """``[path]`` for an image file; the image files of a folder (sorted, not recursive)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"--image {path} does not exist")
    if path.is_file():
        return [path]
    images = sorted(p for p in path.iterdir() if p.is_file() and is_image_file(p))
    if not images:
        raise DatasetError(f"--image {path}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return images


def output_paths(image: Path, output: Path, single: bool) -> tuple[Path, Path]:
    """``(png, json)`` for ``image``: ``output`` itself when it names a PNG, else inside it."""
    if single and output.suffix.lower() == ".png":
        return output, output.with_suffix(".json")
    if output.suffix.lower() == ".png":
        raise DatasetError(f"--output {output}: a folder of images needs an output folder")
    return output / f"{image.stem}.png", output / f"{image.stem}.json"


def predict_to_files(
    inferencer: SAM3LoRAInference,
    image_path: str | Path,
    output: str | Path,
    prompts: list[ConceptPrompt],
    threshold: float | None = None,
    save_coco: str | Path | None = None,
    segmentation: str = "rle",
) -> PredictionRun:
    """Predict on an image or a folder; write an overlay PNG and a JSON per image.

    A folder is processed ``inferencer.batch_size`` images per forward; images that cannot be
    read are collected in ``failures`` and the run goes on. A single image that cannot be read
    raises :class:`DatasetError`. ``save_coco`` also writes every prediction as one COCO file.
    """
    from sam3_lora.predict.inference import open_image, predictions_dict
    from sam3_lora.predict.visualize import draw_predictions

    paths = list_images(image_path)
    single = Path(image_path).is_file()
    output = Path(output)
    labels = list(dict.fromkeys(p.label for p in prompts))
    writer = CocoPredictionWriter(save_coco, labels, segmentation) if save_coco else None
    run = PredictionRun()
    progress = tqdm(total=len(paths), desc="predicting", unit="img", disable=single)
    for start in range(0, len(paths), inferencer.batch_size):
        batch: list[tuple[Path, Image.Image]] = []
        for path in paths[start : start + inferencer.batch_size]:
            try:
                batch.append((path, open_image(path)))
            except DatasetError as error:
                if single:
                    raise
                run.failures.append((path, str(error)))
                progress.update(1)
        if not batch:
            continue
        found = inferencer.predict_prompts(
            [image for _, image in batch], [prompts] * len(batch), threshold
        )
        for (path, image), per_prompt in zip(batch, found, strict=True):
            predictions = predictions_dict(image, per_prompt)
            png, json_file = output_paths(path, output, single)
            png.parent.mkdir(parents=True, exist_ok=True)
            overlay = draw_predictions(
                image,
                predictions["masks"],
                predictions["boxes"],
                predictions["labels"],
                predictions["scores"],
            )
            overlay.save(png)
            write_json(json_file, predictions_to_json(predictions, path.name))
            if writer is not None:
                writer.add(path, predictions)
            run.images += 1
            run.instances += len(predictions["scores"])
            for label in predictions["labels"]:
                run.per_label[label] = run.per_label.get(label, 0) + 1
            run.outputs.append((png, json_file))
            progress.update(1)
    progress.close()
    if writer is not None and run.images:
        run.coco_file = writer.write()
    return run
