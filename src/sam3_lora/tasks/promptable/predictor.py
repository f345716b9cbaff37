"""Prediction of the promptable task: boxes and clicks on an image in, one mask per object out.

The model call is the task's own forward (:meth:`PromptableModel.image_embeddings` once per
image, :meth:`PromptableModel.decode` per group of prompts of one length), in eval mode:
transformers' inference heads, Meta's multimask rule (three masks for a single click, the one
with the highest predicted IoU kept). Masks are upsampled as ``Sam2Processor.post_process_masks``
does (the low-resolution logits bilinearly to the image size in one step) and thresholded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from sam3_lora.errors import PromptError
from sam3_lora.tasks.promptable.module import PromptableModel
from sam3_lora.tasks.promptable.prompts import group_prompts, user_prompt
from sam3_lora.tasks.promptable.spec import ImageInput
from sam3_lora.tasks.promptable.validation import mask_logit_threshold


@dataclass(frozen=True)
class ObjectPrompt:
    """One object's prompt in pixels of the original image: a box, clicks, or both.

    Attributes:
        box: ``[x1, y1, x2, y2]`` or None.
        points: ``[[x, y, label], ...]`` (label 1: on the object, 0: background) or None.
    """

    box: tuple[float, ...] | None = None
    points: tuple[tuple[float, ...], ...] | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "box": None if self.box is None else list(self.box),
            "points": None if self.points is None else [list(p) for p in self.points],
        }


def parse_prompt_json(text: str | None, flag: str) -> object:
    """``--bboxes`` / ``--points`` text as JSON; :class:`PromptError` with an example if not."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        example = "'[[10,20,80,90]]'" if "box" in flag else "'[[40,50,1],[10,10,0]]'"
        raise PromptError(f"{flag} {text!r} is not JSON ({error.msg}); e.g. {example}") from None


def build_object_prompts(boxes: object = None, points: object = None) -> list[ObjectPrompt]:
    """Objects from boxes and / or points.

    Args:
        boxes: ``[[x1, y1, x2, y2], ...]`` (one object each; one box may drop the outer list).
        points: ``[[x, y, label], ...]``: the clicks of one object; or ``[[[x, y, label], ...],
            ...]``: one list of clicks per object.

    Returns:
        With boxes and one point list: the points refine the only box, or the first list goes
        with the first box and so on (as many point lists as boxes); points alone: one object
        per point list.

    Raises:
        PromptError: nothing given, wrong nesting, or point lists that do not pair with boxes
            (number and values are checked against the image by :func:`user_prompt`).
    """
    box_list = _box_list(boxes)
    point_lists = _point_lists(points)
    if not box_list and not point_lists:
        raise PromptError(
            "give --bboxes '[[x1,y1,x2,y2], ...]' and / or --points '[[x,y,label], ...]'"
        )
    if not box_list:
        return [ObjectPrompt(points=p) for p in point_lists]
    if not point_lists:
        return [ObjectPrompt(box=b) for b in box_list]
    if len(point_lists) != len(box_list):
        raise PromptError(
            f"{len(box_list)} boxes and {len(point_lists)} point lists: give one point list per "
            "box ('[[[x,y,label], ...], [[x,y,label], ...]]'), or one box with its points"
        )
    return [ObjectPrompt(b, p) for b, p in zip(box_list, point_lists, strict=True)]


def _box_list(boxes: object) -> list[tuple[float, ...]]:
    if boxes is None:
        return []
    if isinstance(boxes, list | tuple) and boxes and all(_is_number(v) for v in boxes):
        boxes = [boxes]
    if not isinstance(boxes, list | tuple) or not all(isinstance(b, list | tuple) for b in boxes):
        raise PromptError(f"boxes {boxes!r} must be a list of [x1, y1, x2, y2] boxes")
    return [tuple(b) for b in boxes]


def _point_lists(points: object) -> list[tuple[tuple[float, ...], ...]]:
    if points is None:
        return []
    if not isinstance(points, list | tuple) or not points:
        raise PromptError(f"points {points!r} must be [[x, y, label], ...]")
    if all(isinstance(p, list | tuple) and p and all(_is_number(v) for v in p) for p in points):
        points = [points]  # the clicks of one object
    lists = []
    for number, clicks in enumerate(points):
        if not isinstance(clicks, list | tuple) or not clicks:
            raise PromptError(f"point list #{number} {clicks!r} must be [[x, y, label], ...]")
        lists.append(tuple(tuple(p) if isinstance(p, list | tuple) else (p,) for p in clicks))
    return lists


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class ObjectPredictions:
    """The objects of one image, in prompt order.

    Attributes:
        masks: bool [N, H, W] at the image size.
        scores: float32 [N], the model's predicted IoU of each mask.
        object_scores: float32 [N], object-score logits (> 0: the model sees an object).
        boxes: float32 [N, 4], the masks' extents xyxy (zeros for an empty mask).
        prompts: the N prompts.
    """

    masks: np.ndarray
    scores: np.ndarray
    object_scores: np.ndarray
    boxes: np.ndarray
    prompts: list[ObjectPrompt]


class PromptablePredictor:
    """Box / click prediction with a :class:`PromptableModel`.

    Args:
        model: the task module (any PEFT adapter inside is used as loaded).
        image_input: the model's resolution and normalisation.
        device: where the model runs.
        mask_threshold: mask probability threshold.
    """

    def __init__(
        self,
        model: PromptableModel,
        image_input: ImageInput,
        device: torch.device | str = "cpu",
        mask_threshold: float = 0.5,
    ) -> None:
        self.model = model
        self.image_input = image_input
        self.device = torch.device(device)
        self.mask_threshold = mask_threshold

    def pixel_values(self, image: Image.Image) -> torch.Tensor:
        """[1, 3, S, S] as the processor (and :class:`PromptDataset`) prepares the image."""
        size = self.image_input.resolution
        pixels = TF.pil_to_tensor(image.convert("RGB"))
        pixels = TF.resize(pixels, [size, size], InterpolationMode.BILINEAR, antialias=True)
        mean = torch.tensor(self.image_input.mean).view(3, 1, 1)
        std = torch.tensor(self.image_input.std).view(3, 1, 1)
        return ((pixels.float() / 255 - mean) / std)[None].to(self.device)

    @torch.no_grad()
    def predict(self, image: Image.Image, prompts: Sequence[ObjectPrompt]) -> ObjectPredictions:
        """Masks of the objects ``prompts`` point at on ``image``.

        Raises:
            PromptError: a box outside the image, a point label other than 0 / 1, ...
        """
        if not prompts:
            raise PromptError("no object prompt: give at least one box or point")
        width, height = image.size
        resolution = self.image_input.resolution
        scaled = [
            user_prompt(p.box, p.points, (height, width), resolution).to(self.device)
            for p in prompts
        ]
        was_training = self.model.training
        self.model.eval()
        try:
            embeddings = self.model.image_embeddings(self.pixel_values(image))
            count = len(prompts)
            logits = torch.zeros(count, height, width, device=self.device)
            scores = torch.zeros(count, device=self.device)
            object_scores = torch.zeros(count, device=self.device)
            for group in group_prompts(scaled):
                index = torch.zeros(len(group.object_index), dtype=torch.long, device=self.device)
                prediction = self.model.decode(embeddings, index, group.prompts)
                best = prediction.iou_scores.argmax(1)
                rows = torch.arange(len(best), device=self.device)
                low = prediction.mask_logits[rows, best].float()[:, None]
                up = F.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)
                logits[group.object_index] = up[:, 0]
                scores[group.object_index] = prediction.iou_scores[rows, best].float()
                object_scores[group.object_index] = prediction.object_score_logits[:, 0].float()
        finally:
            self.model.train(was_training)
        masks = (logits > mask_logit_threshold(self.mask_threshold)).cpu().numpy()
        return ObjectPredictions(
            masks=masks,
            scores=scores.cpu().numpy(),
            object_scores=object_scores.cpu().numpy(),
            boxes=mask_extents(masks),
            prompts=list(prompts),
        )


def mask_extents(masks: np.ndarray) -> np.ndarray:
    """float32 [N, 4] xyxy pixel extents (x2, y2 exclusive) of bool masks [N, H, W]."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for k, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        if len(xs):
            boxes[k] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return boxes
