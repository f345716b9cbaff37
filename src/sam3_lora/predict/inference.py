"""Prediction with SAM3: a base model, a LoRA adapter on it, or a merged model.

The public API (:class:`SAM3LoRAInference`, the SAM3-LoRA name): weights are loaded as
:mod:`sam3_lora.predict.weights` resolves them, prediction is the concept task's predictor
(:mod:`sam3_lora.tasks.concept.predictor`, the task's one forward).

    from sam3_lora import SAM3LoRAInference

    inferencer = SAM3LoRAInference(weights_path="outputs/my_model/final")
    predictions = inferencer.predict("image.jpg", text="scratch")
    inferencer.visualize_predictions(predictions, output_path="out.png")
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sam3_lora.config import Config, EvaluationSettings, load_config
from sam3_lora.data.images import load_image_rgb, to_rgb8
from sam3_lora.errors import ConfigError, ModelLoadError
from sam3_lora.predict.weights import AdapterControls, load_predictor
from sam3_lora.tasks.concept.module import ConceptModel
from sam3_lora.tasks.concept.predictor import (
    ConceptPredictor,
    ConceptPrompt,
    PromptError,
    PromptPrediction,
    build_prompts,
    mask_nms,
    predictions_dict,
)

__all__ = [
    "ConceptPrompt",
    "PromptError",
    "PromptPrediction",
    "SAM3LoRAInference",
    "build_prompts",
    "mask_nms",
    "open_image",
    "predictions_dict",
]

logger = logging.getLogger(__name__)


def open_image(image: str | Path | Image.Image | np.ndarray) -> Image.Image:
    """An RGB PIL image from a path, a PIL image or an ``[H, W, 3]`` uint8 array."""
    if isinstance(image, Image.Image):
        return to_rgb8(image)
    if isinstance(image, np.ndarray):
        return to_rgb8(Image.fromarray(image))
    return load_image_rgb(image)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class SAM3LoRAInference(AdapterControls):
    """Predict with SAM3 (+ LoRA adapter) from text prompts, box exemplars, or both.

    Args:
        config_path: a training config (YAML or preset); gives the base model and thresholds.
        weights_path: adapter folder, its ``adapter_model.safetensors``, or a merged model
            folder; None = the base model alone.
        model: base model (hub id, folder or alias); overrides the config and the adapter's
            recorded base.
        device: ``"cpu"``, ``"cuda"``...; default: CUDA when available.
        threshold: score threshold of :meth:`predict` (default: the config's, 0.5).
        mask_threshold: mask probability threshold (default: the config's, 0.5).
        nms_iou_threshold: drop a detection whose mask overlaps a better-scoring one of the same
            prompt above this IoU (default: the config's, None = off).
        batch_size: images per forward in :meth:`predict_batch`.
    """

    def __init__(
        self,
        config_path: str | Path | Config | None = None,
        weights_path: str | Path | None = None,
        model: str | None = None,
        device: str | torch.device | None = None,
        threshold: float | None = None,
        mask_threshold: float | None = None,
        batch_size: int | None = None,
        nms_iou_threshold: float | None = None,
    ) -> None:
        config = config_path
        if config is not None and not isinstance(config, Config):
            config = load_config(config)
        evaluation = config.evaluation if config is not None else EvaluationSettings()
        base = model or (config.model.name_or_path if config is not None else None)
        if nms_iou_threshold is not None and not 0 < nms_iou_threshold <= 1:
            raise ConfigError(f"nms_iou_threshold {nms_iou_threshold}: use a value in (0, 1]")
        if weights_path is None and base is None:
            raise ModelLoadError("give weights_path (an adapter or merged model) or a base model")
        self.device = torch.device(device) if device is not None else default_device()
        self.loaded = load_predictor(weights_path, base, self.device)
        self.model = self.loaded.model
        self.processor = self.loaded.processor
        if self.processor is None:
            raise ModelLoadError(f"{self.loaded.base_source} has no processor: cannot predict")
        self.batch_size = batch_size or evaluation.batch_size
        self.predictor = ConceptPredictor(
            ConceptModel(self.model, self.processor.tokenizer),
            self.processor.image_processor,
            self.device,
            threshold=threshold if threshold is not None else evaluation.score_threshold,
            mask_threshold=(
                mask_threshold if mask_threshold is not None else evaluation.mask_threshold
            ),
            nms_iou_threshold=(
                nms_iou_threshold if nms_iou_threshold is not None else evaluation.nms_iou_threshold
            ),
        )

    @property
    def threshold(self) -> float:
        """Score threshold of :meth:`predict` (detection x presence)."""
        return self.predictor.threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self.predictor.threshold = value

    @property
    def mask_threshold(self) -> float:
        """Mask probability threshold."""
        return self.predictor.mask_threshold

    @mask_threshold.setter
    def mask_threshold(self, value: float) -> None:
        self.predictor.mask_threshold = value

    @property
    def nms_iou_threshold(self) -> float | None:
        """Mask NMS IoU (None: off)."""
        return self.predictor.nms_iou_threshold

    # ----------------------------------------------------------------- public API
    def predict(
        self,
        image: str | Path | Image.Image | np.ndarray,
        text: str | Sequence[str] | None = None,
        boxes: Sequence[Sequence[float]] | None = None,
        negative_boxes: Sequence[Sequence[float]] | None = None,
        threshold: float | None = None,
        mask_threshold: float | None = None,
    ) -> dict[str, Any]:
        """Instances found on one image by one or several prompts.

        Args:
            image: a path, a PIL image or an ``[H, W, 3]`` uint8 array.
            text: a concept ("scratch") or several; None with ``boxes`` = box exemplars only.
            boxes / negative_boxes: exemplar boxes ``[[x1, y1, x2, y2], ...]`` in pixels.
            threshold: keep instances with score >= this (default ``self.threshold``).

        Returns:
            ``boxes``: float32 ``[N, 4]`` xyxy pixels; ``scores``: float32 ``[N]``;
            ``masks``: bool ``[N, H, W]``; ``labels``: N prompt texts; ``prompts``: the
            prompt texts; ``presence``: ``{prompt: presence score}``; ``image_size``:
            ``(width, height)``; ``image``: the RGB PIL image. Best score first.
        """
        prompts = build_prompts(text, boxes, negative_boxes)
        pil = open_image(image)
        per_prompt = self.predict_prompts([pil], [prompts], threshold, mask_threshold)[0]
        return predictions_dict(pil, per_prompt)

    def predict_batch(
        self,
        images: Sequence[str | Path | Image.Image | np.ndarray],
        text: str | Sequence[str] | None = None,
        boxes: Sequence[Sequence[float]] | None = None,
        negative_boxes: Sequence[Sequence[float]] | None = None,
        threshold: float | None = None,
        mask_threshold: float | None = None,
    ) -> list[dict[str, Any]]:
        """:meth:`predict` on several images, ``batch_size`` images per forward."""
        prompts = build_prompts(text, boxes, negative_boxes)
        pils = [open_image(image) for image in images]
        results = []
        for start in range(0, len(pils), self.batch_size):
            chunk = pils[start : start + self.batch_size]
            found = self.predict_prompts(chunk, [prompts] * len(chunk), threshold, mask_threshold)
            results.extend(predictions_dict(p, f) for p, f in zip(chunk, found, strict=True))
        return results

    def visualize_predictions(
        self,
        predictions: dict[str, Any],
        output_path: str | Path,
        confidence_threshold: float = 0.5,
        image: Image.Image | str | Path | None = None,
    ) -> Path:
        """Draw ``predictions`` (of :meth:`predict`) with score >= the threshold; write a PNG."""
        from sam3_lora.predict.visualize import draw_predictions

        base = open_image(image) if image is not None else predictions["image"]
        keep = np.asarray(predictions["scores"]) >= confidence_threshold
        overlay = draw_predictions(
            base,
            np.asarray(predictions["masks"])[keep],
            np.asarray(predictions["boxes"])[keep],
            [label for label, k in zip(predictions["labels"], keep, strict=True) if k],
            np.asarray(predictions["scores"])[keep],
        )
        output_path = Path(output_path)
        output_path.parent.mkdir(parents=True, exist_ok=True)
        overlay.save(output_path)
        return output_path

    # ------------------------------------------------------------- batched core
    def predict_prompts(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[Sequence[ConceptPrompt]],
        threshold: float | None = None,
        mask_threshold: float | None = None,
        max_detections: int | None = None,
    ) -> list[list[PromptPrediction]]:
        """Run every prompt of ``prompts[i]`` on ``images[i]``: ``result[i][p]`` (see
        :meth:`ConceptPredictor.predict_prompts`)."""
        return self.predictor.predict_prompts(
            images, prompts, threshold, mask_threshold, max_detections
        )

    @property
    def vision_calls(self) -> int:
        """Images encoded so far (vision features are computed once per image)."""
        return self.predictor.vision_calls

    def _use_model(self, model: torch.nn.Module) -> None:
        self.predictor.model = ConceptModel(model, self.processor.tokenizer)
