"""Prediction with SAM3: a base model, a LoRA adapter on it, or a merged model.

Preprocessing is the HF path (``Sam3Processor``: plain resize to the model resolution, as the
validation transform does). Each image's vision features are computed once and shared by all
its prompts; prompt texts are encoded once per batch. Score = sigmoid(query logit) x
sigmoid(presence logit); masks and boxes come back at the original image size.

    from sam3_lora import SAM3LoRAInference

    inferencer = SAM3LoRAInference(weights_path="outputs/my_model/final")
    predictions = inferencer.predict("image.jpg", text="scratch")
    inferencer.visualize_predictions(predictions, output_path="out.png")
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel
from PIL import Image
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

from sam3_lora.config import Config, EvaluationSettings, load_config
from sam3_lora.data.images import load_image_rgb, to_rgb8
from sam3_lora.errors import AdapterError, ConfigError, ModelLoadError, Sam3LoraError
from sam3_lora.tasks.concept import encode_prompts, select_images
from sam3_lora.weights import load_predictor

logger = logging.getLogger(__name__)

#: The text SAM3 gets for a prompt made of box exemplars only (as transformers' processor does).
VISUAL_PROMPT = "visual"
BOX_PAD = -10  # transformers' padding label for input boxes


class PromptError(Sam3LoraError):
    """A text or box prompt is empty or malformed."""


@dataclass(frozen=True)
class ConceptPrompt:
    """One prompt: a text, optionally with box exemplars (``xyxy`` pixels of the image).

    ``box_labels`` are 1 (positive exemplar: "more like this") or 0 (negative: "not this").
    """

    text: str = VISUAL_PROMPT
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    box_labels: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        """The name given to what the prompt finds."""
        return self.text if self.text != VISUAL_PROMPT or not self.boxes else "object"


def build_prompts(
    texts: Sequence[str] | str | None = None,
    boxes: Sequence[Sequence[float]] | None = None,
    negative_boxes: Sequence[Sequence[float]] | None = None,
) -> list[ConceptPrompt]:
    """Prompts from texts and box exemplars; boxes go with every text (or with ``visual``).

    Raises:
        PromptError: no prompt at all, an empty text, a box that is not ``[x1, y1, x2, y2]``.
    """
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts or [])
    for text in texts:
        if not isinstance(text, str) or not text.strip():
            raise PromptError(f"text prompt {text!r} is empty; give a concept such as 'scratch'")
    exemplars = [_check_box(b, "box") for b in boxes or []]
    negatives = [_check_box(b, "negative box") for b in negative_boxes or []]
    if not texts and not exemplars and not negatives:
        raise PromptError("no prompt: give a text prompt, box exemplars, or both")
    labels = (1,) * len(exemplars) + (0,) * len(negatives)
    all_boxes = tuple(exemplars + negatives)
    return [ConceptPrompt(text.strip(), all_boxes, labels) for text in texts or [VISUAL_PROMPT]]


def _check_box(box: Any, what: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in box)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 4 or not all(np.isfinite(values)):
        raise PromptError(f"{what} {box!r} is not [x1, y1, x2, y2] in pixels")
    x1, y1, x2, y2 = values
    if x2 <= x1 or y2 <= y1:
        raise PromptError(f"{what} {list(values)} is empty: need x2 > x1 and y2 > y1 (xyxy pixels)")
    return values  # type: ignore[return-value]


@dataclass
class PromptPrediction:
    """What one prompt found on one image, best first.

    Attributes:
        prompt: the prompt.
        boxes: float32 ``[N, 4]`` ``x1, y1, x2, y2`` in pixels of the original image.
        scores: float32 ``[N]`` detection x presence, in [0, 1].
        masks: bool ``[N, H, W]`` at the original image size.
        presence: sigmoid of the prompt's presence logit ("is the concept in the image").
    """

    prompt: ConceptPrompt
    boxes: np.ndarray
    scores: np.ndarray
    masks: np.ndarray
    presence: float


def open_image(image: str | Path | Image.Image | np.ndarray) -> Image.Image:
    """An RGB PIL image from a path, a PIL image or an ``[H, W, 3]`` uint8 array."""
    if isinstance(image, Image.Image):
        return to_rgb8(image)
    if isinstance(image, np.ndarray):
        return to_rgb8(Image.fromarray(image))
    return load_image_rgb(image)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class SAM3LoRAInference:
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
        self.threshold = threshold if threshold is not None else evaluation.score_threshold
        self.mask_threshold = (
            mask_threshold if mask_threshold is not None else evaluation.mask_threshold
        )
        self.batch_size = batch_size or evaluation.batch_size
        self.nms_iou_threshold = (
            nms_iou_threshold if nms_iou_threshold is not None else evaluation.nms_iou_threshold
        )
        self.vision_calls = 0  # images encoded (vision features computed once per image)

    @property
    def has_adapter(self) -> bool:
        return isinstance(self.model, PeftModel)

    @contextmanager
    def adapter_disabled(self) -> Iterator[None]:
        """Run the base model inside the block (the adapter is switched off, not unloaded)."""
        if not self.has_adapter:
            raise AdapterError("no adapter is loaded: there is nothing to disable")
        with self.model.disable_adapter():
            yield

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
        from sam3_lora.visualize import draw_predictions

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
    @torch.inference_mode()
    def predict_prompts(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[Sequence[ConceptPrompt]],
        threshold: float | None = None,
        mask_threshold: float | None = None,
        max_detections: int | None = None,
    ) -> list[list[PromptPrediction]]:
        """Run every prompt of ``prompts[i]`` on ``images[i]``: ``result[i][p]``.

        The images' vision features are computed once (one batched call) and shared by all
        their prompts; text-only prompts and prompts with boxes run in separate batches (box
        padding would change text-only outputs).
        """
        threshold = self.threshold if threshold is None else threshold
        mask_threshold = self.mask_threshold if mask_threshold is None else mask_threshold
        if len(images) != len(prompts):
            raise ValueError("one prompt list per image")
        results: list[list[PromptPrediction | None]] = [[None] * len(p) for p in prompts]
        if not images:
            return []
        pixel_values = self.processor.image_processor(images=list(images), return_tensors="pt")[
            "pixel_values"
        ].to(self.device)
        with self._autocast():
            vision = self.model.get_vision_features(pixel_values=pixel_values)
        self.vision_calls += len(images)
        jobs = [
            (i, p) for i, image_prompts in enumerate(prompts) for p in range(len(image_prompts))
        ]
        for with_boxes in (False, True):
            group = [(i, p) for i, p in jobs if bool(prompts[i][p].boxes) == with_boxes]
            if not group:
                continue
            outputs = self._forward(vision, images, prompts, group)
            for row, (i, p) in enumerate(group):
                results[i][p] = _postprocess(
                    prompts[i][p],
                    {k: v[row] for k, v in outputs.items()},
                    images[i].size,
                    threshold,
                    mask_threshold,
                    max_detections,
                    self.nms_iou_threshold,
                )
        return results  # type: ignore[return-value]

    def _forward(
        self,
        vision: Sam3VisionEncoderOutput,
        images: Sequence[Image.Image],
        prompts: Sequence[Sequence[ConceptPrompt]],
        group: list[tuple[int, int]],
    ) -> dict[str, torch.Tensor]:
        device = self.device
        index = torch.tensor([i for i, _ in group], device=device)
        texts = [prompts[i][p].text for i, p in group]
        inputs: dict[str, Any] = {}
        if any(prompts[i][p].boxes for i, p in group):
            boxes, labels = _box_inputs([(prompts[i][p], images[i].size) for i, p in group])
            inputs = {"input_boxes": boxes.to(device), "input_boxes_labels": labels.to(device)}
        with self._autocast():
            text_features, text_mask, text_index = encode_prompts(
                self.model, self.processor.tokenizer, texts, device
            )
            outputs = self.model(
                vision_embeds=select_images(vision, index),
                text_embeds=BaseModelOutputWithPooling(pooler_output=text_features[text_index]),
                attention_mask=text_mask[text_index],
                **inputs,
            )
        return {
            "logits": outputs.pred_logits.float(),
            "presence": outputs.presence_logits.float().reshape(len(group)),
            "boxes": outputs.pred_boxes.float(),
            "masks": outputs.pred_masks.float(),
        }

    def _autocast(self) -> Any:
        if self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()


def _box_inputs(
    prompts: list[tuple[ConceptPrompt, tuple[int, int]]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """cxcywh boxes normalised by the image size ``[B, K, 4]`` and labels ``[B, K]`` (pad -10)."""
    count = max(len(prompt.boxes) for prompt, _ in prompts)
    boxes = torch.full((len(prompts), count, 4), float(BOX_PAD))
    labels = torch.full((len(prompts), count), BOX_PAD, dtype=torch.long)
    for row, (prompt, (width, height)) in enumerate(prompts):
        for k, ((x1, y1, x2, y2), label) in enumerate(
            zip(prompt.boxes, prompt.box_labels, strict=True)
        ):
            x1, x2 = np.clip([x1, x2], 0, width)
            y1, y2 = np.clip([y1, y2], 0, height)
            boxes[row, k] = torch.tensor(
                [
                    (x1 + x2) / 2 / width,
                    (y1 + y2) / 2 / height,
                    (x2 - x1) / width,
                    (y2 - y1) / height,
                ]
            )
            labels[row, k] = label
    return boxes, labels


def _postprocess(
    prompt: ConceptPrompt,
    output: dict[str, torch.Tensor],
    size: tuple[int, int],
    threshold: float,
    mask_threshold: float,
    max_detections: int | None,
    nms_iou_threshold: float | None = None,
) -> PromptPrediction:
    """Scores, boxes and masks of one (image, prompt) pair at the original image size."""
    width, height = size
    presence = output["presence"].sigmoid()
    scores = output["logits"].sigmoid() * presence
    order = torch.argsort(scores, descending=True)
    order = order[scores[order] >= threshold]
    if nms_iou_threshold is not None and len(order) > 1:
        low_res = output["masks"][order].sigmoid() > mask_threshold
        order = order[mask_nms(low_res, nms_iou_threshold)]
    order = order[:max_detections]
    boxes = output["boxes"][order] * torch.tensor(
        [width, height, width, height], device=order.device
    )
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    if len(order):
        logits = torch.nn.functional.interpolate(
            output["masks"][order][None],
            size=(height, width),
            mode="bilinear",
            align_corners=False,
        )[0]
        masks = (logits.sigmoid() > mask_threshold).cpu().numpy()
    else:
        masks = np.zeros((0, height, width), dtype=bool)
    return PromptPrediction(
        prompt=prompt,
        boxes=boxes.cpu().numpy().astype(np.float32),
        scores=scores[order].cpu().numpy().astype(np.float32),
        masks=masks,
        presence=float(presence),
    )


def mask_nms(masks: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression on mask IoU.

    Args:
        masks: bool ``[N, h, w]``, best score first.
        iou_threshold: a mask is dropped when its IoU with a kept, better one exceeds this.

    Returns:
        Indices of the kept masks, in order.
    """
    flat = masks.flatten(1).float()
    intersection = flat @ flat.T
    area = flat.sum(1)
    iou = intersection / (area[:, None] + area[None, :] - intersection).clamp(min=1)
    suppressed = torch.zeros(len(masks), dtype=torch.bool, device=masks.device)
    kept = []
    for i in range(len(masks)):
        if not suppressed[i]:
            kept.append(i)
            suppressed |= iou[i] > iou_threshold
    return torch.tensor(kept, dtype=torch.long, device=masks.device)


def predictions_dict(image: Image.Image, per_prompt: list[PromptPrediction]) -> dict[str, Any]:
    """Merge per-prompt results into the documented :meth:`SAM3LoRAInference.predict` dict."""
    width, height = image.size
    scores = np.concatenate([p.scores for p in per_prompt]) if per_prompt else np.zeros(0)
    order = np.argsort(-scores, kind="stable")
    labels = [p.prompt.label for p in per_prompt for _ in range(len(p.scores))]
    return {
        "boxes": np.concatenate([p.boxes for p in per_prompt]).reshape(-1, 4)[order],
        "scores": scores.astype(np.float32)[order],
        "masks": np.concatenate([p.masks for p in per_prompt]).reshape(-1, height, width)[order],
        "labels": [labels[i] for i in order],
        "prompts": [p.prompt.label for p in per_prompt],
        "presence": {p.prompt.label: p.presence for p in per_prompt},
        "image_size": (width, height),
        "image": image,
    }
