"""Prompts of the promptable task, with the semantics of Meta's SAM2.1 training.

Every prompt is a SAM point sequence, as in Meta's ``SAM2Train``: a box is its two corners with
labels 2 (top left) and 3 (bottom right), clicks are points with label 1 (positive) or 0
(negative). Coordinates are (x, y) in pixels of the model input (``resolution`` square), pixel
indices as Meta's samplers return them (the prompt encoder adds 0.5). Token order does not
matter to the mask decoder, so box corners followed by clicks equal transformers' ``input_boxes``
+ ``input_points``.

Training (``sample_*``, Meta's ``sam2/modeling/sam2_utils.py``):

- initial prompt per object: with probability 0.5 the mask's box (``mask_to_box``: inclusive
  pixel extent), each coordinate moved uniformly by up to 10 % of the box's width / height and at
  most 20 px, clamped to the image; else one positive click uniform over the mask;
- corrective click: uniform over the error region of the current prediction (false negative ->
  label 1, false positive -> label 0); with probability 0.1 from the ground truth instead (a
  positive click uniform over the mask); a perfect prediction gets a negative click on the
  background.

Evaluation (``center_clicks``, Meta's "center" / RITM sampling): the click is the error-region
pixel farthest from the region's border (the mask's centre-most pixel for the first click).

Randomness comes only from the CPU ``torch.Generator`` passed in (a few uniform numbers per
object, whatever the masks' device: a seed gives the same prompts on CPU and GPU). Meta draws the
box-or-click and from-ground-truth choices once per batch; we draw them per object.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sam3_lora.errors import PromptError

POSITIVE = 1
NEGATIVE = 0
BOX_TOP_LEFT = 2
BOX_BOTTOM_RIGHT = 3


@dataclass
class PointPrompts:
    """Point sequences of N objects, all of the same length K.

    Attributes:
        points: float32 [N, K, 2], (x, y) in model-input pixels.
        labels: int32 [N, K]: 1 positive click, 0 negative click, 2 / 3 box corners.
    """

    points: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.points.dim() != 3 or self.points.shape[-1] != 2:
            raise ValueError(f"points must be [N, K, 2], got {tuple(self.points.shape)}")
        if self.labels.shape != self.points.shape[:2]:
            raise ValueError(
                f"labels {tuple(self.labels.shape)} must be [N, K] = {tuple(self.points.shape[:2])}"
            )

    def __len__(self) -> int:
        return self.points.shape[0]

    @property
    def num_points(self) -> int:
        """K, box corners included."""
        return self.points.shape[1]

    @property
    def multimask(self) -> bool:
        """Meta's rule (``multimask_min_pt_num: 0``, ``multimask_max_pt_num: 1``): three masks for
        at most one point, one mask otherwise (a box counts as two points)."""
        return self.num_points <= 1

    def append(self, points: Tensor, labels: Tensor) -> PointPrompts:
        """These prompts with one more point per object (``points`` [N, 2], ``labels`` [N])."""
        return PointPrompts(
            torch.cat([self.points, points[:, None].to(self.points)], dim=1),
            torch.cat([self.labels, labels[:, None].to(self.labels)], dim=1),
        )

    def select(self, index: Tensor) -> PointPrompts:
        return PointPrompts(self.points[index], self.labels[index])

    def to(self, device: torch.device | str) -> PointPrompts:
        return PointPrompts(self.points.to(device), self.labels.to(device))


@dataclass
class PromptGroup:
    """Objects whose prompts have the same length, decoded together.

    Attributes:
        object_index: long [n], the objects' rows in the batch.
        prompts: their n point sequences.
    """

    object_index: Tensor
    prompts: PointPrompts


def mask_boxes(masks: Tensor) -> Tensor:
    """Meta's ``mask_to_box``: float [N, 4] (x_min, y_min, x_max, y_max) inclusive pixel indices
    of bool masks [N, H, W]. Every mask must have a pixel."""
    _check_not_empty(masks, "a box")
    rows, cols = masks.any(dim=2), masks.any(dim=1)  # [N, H], [N, W]
    ys = torch.arange(masks.shape[1], device=masks.device)
    xs = torch.arange(masks.shape[2], device=masks.device)
    big = max(masks.shape[1:])
    return torch.stack(
        [
            torch.where(cols, xs, big).amin(1),
            torch.where(rows, ys, big).amin(1),
            torch.where(cols, xs, -1).amax(1),
            torch.where(rows, ys, -1).amax(1),
        ],
        dim=1,
    ).float()


def box_prompts(boxes: Tensor) -> PointPrompts:
    """Boxes [N, 4] xyxy as two-corner point sequences labelled 2 and 3."""
    labels = torch.tensor([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT], dtype=torch.int32, device=boxes.device)
    return PointPrompts(boxes.float().reshape(-1, 2, 2), labels.expand(len(boxes), 2).clone())


def noisy_boxes(
    boxes: Tensor,
    image_size: tuple[int, int],
    uniforms: Tensor,
    noise: float = 0.1,
    noise_bound: float = 20.0,
) -> Tensor:
    """Meta's box noise: each coordinate moved by ``(2u - 1) * min(noise * side, noise_bound)``
    (side = width for x, height for y), then clamped to ``[0, W - 1] x [0, H - 1]``.

    Args:
        boxes: float [N, 4] xyxy.
        image_size: (H, W).
        uniforms: [N, 4] numbers in [0, 1).
    """
    height, width = image_size
    sides = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)  # w, h, w, h
    bound = torch.clamp(sides * noise, max=noise_bound)
    moved = boxes + (2 * uniforms.to(boxes) - 1) * bound
    upper = boxes.new_tensor([width - 1, height - 1, width - 1, height - 1])
    return torch.minimum(moved.clamp(min=0), upper)


def sample_pixels(regions: Tensor, uniforms: Tensor) -> tuple[Tensor, Tensor]:
    """One pixel per region, uniform over its pixels: the ``floor(u * count)``-th in raster order.

    Args:
        regions: bool [N, H, W].
        uniforms: [N] numbers in [0, 1).

    Returns:
        flat pixel index long [N] (0 for an empty region) and ``found`` bool [N].
    """
    flat = regions.flatten(1)
    counts = flat.sum(1)
    rank = torch.floor(uniforms.to(flat.device, torch.float64) * counts).long()
    rank = torch.minimum(rank, (counts - 1).clamp(min=0))
    cumulative = flat.cumsum(1, dtype=torch.int64)
    index = torch.searchsorted(cumulative, (rank + 1)[:, None]).squeeze(1)
    found = counts > 0
    return torch.where(found, index, 0), found


def _xy(flat_index: Tensor, width: int) -> Tensor:
    return torch.stack([flat_index % width, flat_index // width], dim=1).float()


def sample_initial_prompts(
    masks: Tensor,
    generator: torch.Generator,
    box_probability: float = 0.5,
    box_noise: float = 0.1,
    box_noise_bound: float = 20.0,
) -> list[PromptGroup]:
    """Training prompts: per object a noisy box (``box_probability``) or one positive click.

    Args:
        masks: bool [N, H, W] ground-truth masks, none empty.
        generator: a CPU generator; 6 numbers are drawn per object, whatever is chosen.

    Returns:
        Up to two groups: the box objects (K = 2) and the click objects (K = 1).
    """
    _check_not_empty(masks, "a prompt")
    count, height, width = masks.shape
    use_box = torch.rand(count, generator=generator) < box_probability
    box_uniforms = torch.rand(count, 4, generator=generator)
    point_uniforms = torch.rand(count, generator=generator)
    use_box = use_box.to(masks.device)
    groups = []
    if use_box.any():
        index = use_box.nonzero().squeeze(1)
        boxes = noisy_boxes(
            mask_boxes(masks[index]),
            (height, width),
            box_uniforms.to(masks.device)[index],
            box_noise,
            box_noise_bound,
        )
        groups.append(PromptGroup(index, box_prompts(boxes)))
    if not use_box.all():
        index = (~use_box).nonzero().squeeze(1)
        flat, _ = sample_pixels(masks[index], point_uniforms[index.cpu()])
        labels = torch.full((len(index), 1), POSITIVE, dtype=torch.int32, device=masks.device)
        groups.append(PromptGroup(index, PointPrompts(_xy(flat, width)[:, None], labels)))
    return groups


def sample_corrective_clicks(
    targets: Tensor,
    predictions: Tensor,
    generator: torch.Generator,
    gt_probability: float = 0.1,
) -> tuple[Tensor, Tensor]:
    """One corrective click per object from the error region (Meta's uniform sampling).

    Args:
        targets: bool [N, H, W] ground truth.
        predictions: bool [N, H, W] current prediction (logits > 0).
        generator: a CPU generator; 2 numbers are drawn per object.
        gt_probability: chance of clicking as if nothing were predicted (a positive click
            uniform over the ground truth).

    Returns:
        points float [N, 2] (x, y) and labels int32 [N] (1 in a false negative, else 0).
    """
    count, _, width = targets.shape
    from_gt = (torch.rand(count, generator=generator) < gt_probability).to(targets.device)
    uniforms = torch.rand(count, generator=generator)
    predicted = predictions & ~from_gt[:, None, None]
    false_negative = targets & ~predicted
    error = false_negative | (predicted & ~targets)
    all_correct = ~error.flatten(1).any(1)
    region = torch.where(all_correct[:, None, None], ~targets, error)
    flat, _ = sample_pixels(region, uniforms)
    positive = false_negative.flatten(1).gather(1, flat[:, None]).squeeze(1)
    return _xy(flat, width), positive.to(torch.int32)


def center_clicks(targets: Tensor, predictions: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Meta's evaluation click (``sample_one_point_from_error_center``): the error pixel with the
    largest distance to its region's border (image border counts as border), positive when the
    false-negative region's maximum is larger than the false-positive one's.

    Args:
        targets: bool [N, H, W].
        predictions: bool [N, H, W]; None = nothing predicted (the mask's centre-most pixel).

    Returns:
        points float [N, 2] and labels int32 [N], on the targets' device.
    """
    from scipy.ndimage import distance_transform_edt

    gt = targets.cpu().numpy()
    pred = np.zeros_like(gt) if predictions is None else predictions.cpu().numpy()
    points, labels = [], []
    for target, predicted in zip(gt, pred, strict=True):
        distances = []
        for region in (target & ~predicted, predicted & ~target):  # FN, FP
            padded = distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
            distances.append(padded.ravel())
        fn_best, fp_best = (int(np.argmax(d)) for d in distances)
        positive = distances[0][fn_best] > distances[1][fp_best]
        flat = fn_best if positive else fp_best
        points.append((flat % gt.shape[2], flat // gt.shape[2]))
        labels.append(int(positive))
    return (
        torch.tensor(points, dtype=torch.float32, device=targets.device).reshape(-1, 2),
        torch.tensor(labels, dtype=torch.int32, device=targets.device),
    )


def eval_prompts(masks: Tensor, prompt: str) -> list[PromptGroup]:
    """Deterministic prompts for validation / evaluation: ``box`` (the mask's box, no noise) or
    ``point`` (one positive click at the mask's centre-most pixel). One group of all objects."""
    _check_not_empty(masks, "a prompt")
    index = torch.arange(len(masks), device=masks.device)
    if prompt == "box":
        return [PromptGroup(index, box_prompts(mask_boxes(masks)))]
    if prompt == "point":
        points, labels = center_clicks(masks)
        return [PromptGroup(index, PointPrompts(points[:, None], labels[:, None]))]
    raise ValueError(f"unknown evaluation prompt `{prompt}`; use `box` or `point`")


def group_prompts(prompts: Sequence[PointPrompts]) -> list[PromptGroup]:
    """Group one-object prompts of any lengths by length (for user prompts at prediction)."""
    by_length: dict[int, list[int]] = {}
    for row, prompt in enumerate(prompts):
        if len(prompt) != 1:
            raise ValueError(f"prompt #{row} holds {len(prompt)} objects; expected 1")
        by_length.setdefault(prompt.num_points, []).append(row)
    groups = []
    for rows in by_length.values():
        device = prompts[rows[0]].points.device
        groups.append(
            PromptGroup(
                torch.tensor(rows, dtype=torch.long, device=device),
                PointPrompts(
                    torch.cat([prompts[r].points for r in rows]),
                    torch.cat([prompts[r].labels for r in rows]),
                ),
            )
        )
    return groups


def user_prompt(
    box: Sequence[float] | None,
    points: Sequence[Sequence[float]] | None,
    image_size: tuple[int, int],
    resolution: int,
) -> PointPrompts:
    """Check one object's user prompt and scale it to the model input, as the processors do.

    Args:
        box: ``[x1, y1, x2, y2]`` in pixels of the original image, or None.
        points: ``[[x, y, label], ...]`` with label 1 (object) or 0 (background), or None.
        image_size: the original image's (height, width).
        resolution: the model's input side.

    Raises:
        PromptError: no prompt, a box that is not inside the image or is empty, a point outside
            the image or with a label other than 0 / 1.
    """
    height, width = image_size
    if box is None and not points:
        raise PromptError("give a box [x1, y1, x2, y2] or points [[x, y, label], ...]")
    xy: list[tuple[float, float]] = []
    labels: list[int] = []
    if box is not None:
        values = _numbers(box, 4, f"box {box!r}", "[x1, y1, x2, y2]")
        x1, y1, x2, y2 = values
        if x2 <= x1 or y2 <= y1:
            raise PromptError(
                f"box {values} is empty: a box is [x1, y1, x2, y2] with x2 > x1 and y2 > y1 "
                "(corners, not [x, y, width, height])"
            )
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            raise PromptError(
                f"box {values} does not lie inside the {width}x{height} image: a box is "
                f"[x1, y1, x2, y2] in pixels with 0 <= x1 < x2 <= {width} and "
                f"0 <= y1 < y2 <= {height}"
            )
        xy += [(x1, y1), (x2, y2)]
        labels += [BOX_TOP_LEFT, BOX_BOTTOM_RIGHT]
    for number, point in enumerate(points or []):
        x, y, label = _numbers(point, 3, f"point #{number} {point!r}", "[x, y, label]")
        if label not in (POSITIVE, NEGATIVE):
            raise PromptError(
                f"point #{number} {[x, y, label]} has label {label:g}; a point label is 1 "
                "(on the object) or 0 (background)"
            )
        if not (0 <= x <= width and 0 <= y <= height):
            raise PromptError(
                f"point #{number} ({x:g}, {y:g}) lies outside the {width}x{height} image"
            )
        xy.append((x, y))
        labels.append(int(label))
    scale = torch.tensor([resolution / width, resolution / height])
    return PointPrompts(
        (torch.tensor(xy, dtype=torch.float32) * scale)[None],
        torch.tensor(labels, dtype=torch.int32)[None],
    )


def _numbers(values: Sequence[float], count: int, what: str, form: str) -> list[float]:
    try:
        length = len(values)
    except TypeError:
        length = -1
    if isinstance(values, str | bytes) or length != count:
        raise PromptError(f"{what} must be {form}")
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        raise PromptError(f"{what} must be {form}, numbers only") from None
    if not all(math.isfinite(v) for v in numbers):
        raise PromptError(f"{what} contains NaN or infinite values")
    return numbers


def _check_not_empty(masks: Tensor, what: str) -> None:
    if masks.dim() != 3:
        raise ValueError(f"masks must be [N, H, W], got {tuple(masks.shape)}")
    empty = (~masks.flatten(1).any(1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"target masks {empty[:8]} are empty: {what} cannot be drawn from them")
