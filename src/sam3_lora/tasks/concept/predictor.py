"""SAM3's predictor: text / box-exemplar prompts in, scored instances at image size out.

Preprocessing is the HF path (``Sam3Processor``'s image processor: plain resize to the model
resolution, as the validation transform does). The images and prompts become one
:class:`ConceptBatch` and run through the task's one forward (:class:`ConceptModel`): each
image's vision features are computed once and shared by all its prompts. Score =
sigmoid(query logit) x sigmoid(presence logit); masks and boxes come back at the original image
size.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.ops import box_convert

from sam3_lora.errors import PromptError
from sam3_lora.tasks.concept.module import ConceptModel
from sam3_lora.tasks.concept.samples import BOX_PADDING_LABEL, ConceptBatch

#: The text SAM3 gets for a prompt made of box exemplars only (as transformers' processor does).
VISUAL_PROMPT = "visual"


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


class ConceptPredictor:
    """Batched prediction with a :class:`ConceptModel`.

    Args:
        model: the task module (its network may carry an adapter).
        image_processor: the processor's image processor (resize + normalise).
        device: where the model runs.
        threshold / mask_threshold / nms_iou_threshold: defaults of :meth:`predict_prompts`.
    """

    def __init__(
        self,
        model: ConceptModel,
        image_processor: Any,
        device: torch.device,
        threshold: float = 0.5,
        mask_threshold: float = 0.5,
        nms_iou_threshold: float | None = None,
    ) -> None:
        self.model = model
        self.image_processor = image_processor
        self.device = device
        self.threshold = threshold
        self.mask_threshold = mask_threshold
        self.nms_iou_threshold = nms_iou_threshold
        self.vision_calls = 0  # images encoded (vision features computed once per image)

    @torch.inference_mode()
    def predict_prompts(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[Sequence[ConceptPrompt]],
        threshold: float | None = None,
        mask_threshold: float | None = None,
        max_detections: int | None = None,
    ) -> list[list[PromptPrediction]]:
        """Run every prompt of ``prompts[i]`` on ``images[i]``: ``result[i][p]``."""
        threshold = self.threshold if threshold is None else threshold
        mask_threshold = self.mask_threshold if mask_threshold is None else mask_threshold
        if len(images) != len(prompts):
            raise ValueError("one prompt list per image")
        if not images:
            return []
        batch = self.batch(images, prompts)
        with self._autocast():
            outputs = self.model(batch)
        self.vision_calls += len(images)
        final = {
            "logits": outputs.logits[-1].float(),
            "presence": outputs.presence_logits[-1].float().reshape(-1),
            "boxes": box_convert(outputs.boxes[-1].float(), "cxcywh", "xyxy"),
            "masks": outputs.masks.float(),
        }
        results: list[list[PromptPrediction]] = []
        row = 0
        for image, image_prompts in zip(images, prompts, strict=True):
            results.append([])
            for prompt in image_prompts:
                results[-1].append(
                    _postprocess(
                        prompt,
                        {k: v[row] for k, v in final.items()},
                        image.size,
                        threshold,
                        mask_threshold,
                        max_detections,
                        self.nms_iou_threshold,
                    )
                )
                row += 1
        return results

    def batch(
        self, images: Sequence[Image.Image], prompts: Sequence[Sequence[ConceptPrompt]]
    ) -> ConceptBatch:
        """The images and their prompts as one :class:`ConceptBatch` on the model's device."""
        pixel_values = self.image_processor(images=list(images), return_tensors="pt")[
            "pixel_values"
        ]
        pairs = [(p, image.size) for image, ps in zip(images, prompts, strict=True) for p in ps]
        boxes = labels = None
        if any(prompt.boxes for prompt, _ in pairs):
            boxes, labels = _box_inputs(pairs)
        return ConceptBatch(
            pixel_values=pixel_values,
            prompt_image_index=torch.tensor(
                [i for i, ps in enumerate(prompts) for _ in ps], dtype=torch.long
            ),
            prompts=[prompt.text for prompt, _ in pairs],
            prompt_category_ids=[0] * len(pairs),
            target_boxes=[],
            target_masks=[],
            image_indices=list(range(len(images))),
            input_boxes=boxes,
            input_boxes_labels=labels,
        ).to(self.device)

    def _autocast(self) -> Any:
        if self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()


def _box_inputs(
    prompts: list[tuple[ConceptPrompt, tuple[int, int]]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """cxcywh boxes normalised by the image size ``[B, K, 4]`` and labels ``[B, K]`` (pad -10)."""
    count = max(len(prompt.boxes) for prompt, _ in prompts)
    boxes = torch.full((len(prompts), count, 4), float(BOX_PADDING_LABEL))
    labels = torch.full((len(prompts), count), BOX_PADDING_LABEL, dtype=torch.long)
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
