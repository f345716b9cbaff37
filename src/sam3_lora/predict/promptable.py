"""Prediction with SAM2 / SAM2.1 or SAM3's tracker: a base model, a LoRA adapter on it, or a
merged model; boxes and clicks in, one mask per object out.

    from sam3_lora.predict.promptable import SAM2LoRAInference

    inferencer = SAM2LoRAInference(weights_path="outputs/sam2_lora/final")
    predictions = inferencer.predict("image.png", boxes=[[10, 20, 80, 90]])
    predictions = inferencer.predict("image.png", points=[[40, 50, 1], [10, 10, 0]])
    inferencer.visualize_predictions(predictions, "out.png")

Weights are resolved as for SAM3 (:mod:`sam3_lora.predict.weights`); the family comes from the
config, else from the weights (:func:`~sam3_lora.predict.weights.detect_family`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sam3_lora.config import Config, EvaluationSettings, load_config
from sam3_lora.errors import ConfigError, ModelLoadError
from sam3_lora.predict.inference import default_device, open_image
from sam3_lora.predict.weights import AdapterControls, detect_family, load_predictor
from sam3_lora.tasks import get_spec
from sam3_lora.tasks.promptable.module import PromptableModel
from sam3_lora.tasks.promptable.predictor import (
    ObjectPredictions,
    ObjectPrompt,
    PromptablePredictor,
    build_object_prompts,
)
from sam3_lora.tasks.promptable.spec import ImageInput


class SAM2LoRAInference(AdapterControls):
    """Predict with SAM2 / SAM3's tracker (+ LoRA adapter) from boxes, clicks, or both.

    Args:
        config_path: a training config (YAML or preset): base model, family, mask threshold.
        weights_path: adapter folder, its ``adapter_model.safetensors``, or a merged model
            folder; None = the base model alone.
        model: base model (hub id, folder or alias); overrides the config and the adapter's
            recorded base.
        family: ``sam2`` or ``sam3_tracker``; default: the config's, else found from the weights.
        device: ``"cpu"``, ``"cuda"``...; default: CUDA when available.
        mask_threshold: mask probability threshold (default: the config's, 0.5).
    """

    def __init__(
        self,
        config_path: str | Path | Config | None = None,
        weights_path: str | Path | None = None,
        model: str | None = None,
        family: str | None = None,
        device: str | torch.device | None = None,
        mask_threshold: float | None = None,
    ) -> None:
        config = config_path
        if config is not None and not isinstance(config, Config):
            config = load_config(config)
        evaluation = config.evaluation if config is not None else EvaluationSettings()
        base = model or (config.model.name_or_path if config is not None else None)
        if weights_path is None and base is None:
            raise ModelLoadError("give weights_path (an adapter or merged model) or a base model")
        if family is None:
            family = config.model.family if config is not None else None
        self.family = family or detect_family(weights_path, base)
        self.spec = get_spec(self.family)
        if self.spec.task != "promptable":
            raise ConfigError(
                f"model.family {self.family} takes text prompts: use SAM3LoRAInference; "
                "SAM2LoRAInference is for sam2 and sam3_tracker"
            )
        self.device = torch.device(device) if device is not None else default_device()
        self.loaded = load_predictor(weights_path, base, self.device, self.family)
        if self.loaded.processor is None:
            raise ModelLoadError(f"{self.loaded.base_source} has no processor: cannot predict")
        self.model = self.loaded.model
        self.image_input = ImageInput.from_processor(self.loaded.processor)
        threshold = evaluation.mask_threshold if mask_threshold is None else mask_threshold
        self.predictor = PromptablePredictor(
            PromptableModel(self.model).eval(), self.image_input, self.device, threshold
        )

    @property
    def mask_threshold(self) -> float:
        return self.predictor.mask_threshold

    @property
    def module(self) -> PromptableModel:
        """The task module (the one forward) around the loaded model."""
        return self.predictor.model

    def _use_model(self, model: torch.nn.Module) -> None:
        self.predictor.model = PromptableModel(model).eval()

    def predict_objects(
        self, image: str | Path | Image.Image | np.ndarray, prompts: Sequence[ObjectPrompt]
    ) -> ObjectPredictions:
        """The masks of ``prompts`` on one image (see :class:`ObjectPredictions`)."""
        return self.predictor.predict(open_image(image), prompts)

    def predict(
        self,
        image: str | Path | Image.Image | np.ndarray,
        boxes: Sequence[Sequence[float]] | None = None,
        points: Sequence[Any] | None = None,
    ) -> dict[str, Any]:
        """One mask per object on one image.

        Args:
            image: a path, a PIL image or an ``[H, W, 3]`` uint8 array.
            boxes: ``[[x1, y1, x2, y2], ...]`` in pixels, one object each.
            points: ``[[x, y, label], ...]`` (one object's clicks, label 1 object / 0
                background), or one such list per object; with boxes: one list per box.

        Returns:
            ``masks`` bool ``[N, H, W]``, ``scores`` (predicted IoU) ``[N]``, ``boxes`` (mask
            extents, xyxy) ``[N, 4]``, ``object_scores`` ``[N]``, ``labels`` (``object 1`` ...),
            ``prompts``, ``image_size`` ``(width, height)``, ``image``.

        Raises:
            PromptError: one clear message for a box outside the image, a point label other
                than 0 / 1, points that do not pair with the boxes, ...
        """
        pil = open_image(image)
        found = self.predictor.predict(pil, build_object_prompts(boxes, points))
        return predictions_dict(pil, found)

    def visualize_predictions(self, predictions: dict[str, Any], output_path: str | Path) -> Path:
        """Draw ``predictions`` (of :meth:`predict`) with their prompts; write a PNG."""
        from sam3_lora.predict.visualize import draw_predictions

        overlay = draw_prompts(
            draw_predictions(
                predictions["image"],
                predictions["masks"],
                predictions["boxes"],
                predictions["labels"],
                predictions["scores"],
            ),
            predictions["prompts"],
        )
        output_path = Path(output_path)
        output_path.parent.mkdir(parents=True, exist_ok=True)
        overlay.save(output_path)
        return output_path


def predictions_dict(image: Image.Image, found: ObjectPredictions) -> dict[str, Any]:
    """:class:`ObjectPredictions` as the dict :meth:`SAM2LoRAInference.predict` returns (the
    keys the overlay and COCO writers of SAM3 read, plus ``object_scores``)."""
    return {
        "masks": found.masks,
        "scores": found.scores,
        "object_scores": found.object_scores,
        "boxes": found.boxes,
        "labels": [f"object {k + 1}" for k in range(len(found.prompts))],
        "prompts": [p.as_dict() for p in found.prompts],
        "image_size": image.size,
        "image": image,
    }


def predictions_to_json(predictions: dict[str, Any], image_name: str) -> dict[str, Any]:
    """The JSON form of a :meth:`SAM2LoRAInference.predict` dict (masks as COCO RLE)."""
    from sam3_lora.predict.autolabel import encode_mask

    width, height = predictions["image_size"]
    objects = []
    for k, mask in enumerate(predictions["masks"]):
        objects.append(
            {
                "label": predictions["labels"][k],
                "prompt": predictions["prompts"][k],
                "score": round(float(predictions["scores"][k]), 5),
                "object_score": round(float(predictions["object_scores"][k]), 5),
                "box": [round(float(v), 2) for v in predictions["boxes"][k]],
                "area": int(mask.sum()),
                "mask": encode_mask(mask),
            }
        )
    return {"image": image_name, "width": width, "height": height, "objects": objects}


def draw_prompts(image: Image.Image, prompts: Sequence[dict[str, Any]]) -> Image.Image:
    """Mark the prompts on an overlay: boxes dashed white, clicks green (1) / red (0)."""
    from PIL import ImageDraw

    canvas = image.copy()
    draw = ImageDraw.Draw(canvas)
    radius = max(2, min(canvas.size) // 80)
    for prompt in prompts:
        if prompt.get("box") is not None:
            x1, y1, x2, y2 = prompt["box"]
            draw.rectangle([x1, y1, x2, y2], outline=(255, 255, 255), width=1)
        for x, y, label in prompt.get("points") or []:
            colour = (40, 220, 40) if label == 1 else (230, 40, 40)
            draw.ellipse(
                [x - radius, y - radius, x + radius, y + radius],
                fill=colour,
                outline=(255, 255, 255),
            )
    return canvas


def predict_to_files(
    inferencer: SAM2LoRAInference,
    image_path: str | Path,
    output: str | Path,
    prompts: Sequence[ObjectPrompt],
    save_coco: str | Path | None = None,
    segmentation: str = "rle",
) -> Any:
    """Predict the same prompts on an image or each image of a folder; write an overlay PNG and
    a JSON per image (and, with ``save_coco``, one COCO file of every mask, category
    ``object``). A folder's unreadable images, or images the prompts do not fit, are collected
    in ``failures``; for a single image they raise.

    Returns:
        The :class:`~sam3_lora.predict.autolabel.PredictionRun`.
    """
    from sam3_lora.data.jsonio import write_json
    from sam3_lora.errors import DatasetError, PromptError
    from sam3_lora.predict.autolabel import (
        CocoPredictionWriter,
        PredictionRun,
        list_images,
        output_paths,
    )

    paths = list_images(image_path)
    single = Path(image_path).is_file()
    output = Path(output)
    writer = CocoPredictionWriter(save_coco, ["object"], segmentation) if save_coco else None
    run = PredictionRun()
    for path in paths:
        try:
            image = open_image(path)
            predictions = predictions_dict(image, inferencer.predictor.predict(image, prompts))
        except (DatasetError, PromptError) as error:
            if single:
                raise
            run.failures.append((path, str(error)))
            continue
        png, json_file = output_paths(path, output, single)
        png.parent.mkdir(parents=True, exist_ok=True)
        inferencer.visualize_predictions(predictions, png)
        write_json(json_file, predictions_to_json(predictions, path.name))
        if writer is not None:
            writer.add(path, {**predictions, "labels": ["object"] * len(predictions["labels"])})
        run.images += 1
        run.instances += len(predictions["labels"])
        for label in predictions["labels"]:
            run.per_label[label] = run.per_label.get(label, 0) + 1
        run.outputs.append((png, json_file))
    if writer is not None and run.images:
        run.coco_file = writer.write()
    return run
