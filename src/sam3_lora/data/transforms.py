"""Geometric transforms applied to an image, its boxes and its masks together.

Training follows Meta's SAM3 recipe: a random *square* resize (aspect ratio not kept) to a side
``S`` picked from a grid, then zero padding at a random position to ``resolution x resolution``.
Validation resizes to the resolution square. Pixels are normalised with the task's mean and std
(SAM3: 0.5 / 0.5, so padding reads -1; SAM2: ImageNet's), applied after padding. An optional
horizontal flip (not in Meta's recipe) mirrors the image first.

The grid of sizes: Meta uses ``S in {480, 512, ..., 992}`` for a 1008 model. We generalise it as
multiples of ``step = max(1, round(resolution / 31.5))`` from ``scale_range[0] * resolution`` to
``scale_range[1] * resolution`` (both rounded to the nearest multiple, capped at the resolution).
This reproduces Meta's 17 sizes at 1008 and gives ``{105, 112, ..., 217}`` (17 sizes) at 224.

Randomness comes only from the ``torch.Generator`` passed to the call; global RNG state is left
untouched, so a training run can be replayed or resumed from its generator state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from sam3_lora.errors import ConfigError, DatasetError

META_RESOLUTION = 1008
META_SIZE_STEP = 32


@dataclass
class TransformedSample:
    """One image with its instances, ready for the model."""

    pixel_values: torch.Tensor  # float32 [3, S, S], (x / 255 - mean) / std
    boxes_xyxy: torch.Tensor  # float32 [N, 4], pixels in the S x S frame
    masks: torch.Tensor  # bool [N, S, S]
    valid_region: tuple[int, int, int, int]  # x0, y0, x1, y1 of the real image in the frame


def train_resize_choices(
    resolution: int, scale_range: tuple[float, float] = (0.48, 0.98)
) -> list[int]:
    """Square sizes the training transform picks from (Meta's grid scaled to ``resolution``)."""
    low, high = scale_range
    if not 0 < low <= high <= 1:
        raise ConfigError(
            f"scale_range={scale_range!r} must satisfy 0 < min <= max <= 1 (fractions of the "
            "model resolution); Meta uses (0.48, 0.98)."
        )
    step = max(1, round(resolution * META_SIZE_STEP / META_RESOLUTION))
    first = max(step, round(low * resolution / step) * step)
    last = min(resolution, max(first, round(high * resolution / step) * step))
    return list(range(first, last + 1, step))


@dataclass
class SampleTransform:
    """Callable ``(image, boxes_xyxy, masks, generator) -> TransformedSample``.

    A dataclass rather than a closure so it pickles into DataLoader workers.
    """

    resolution: int
    train: bool
    resize_choices: list[int]
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]
    horizontal_flip: bool = False

    def __call__(
        self,
        image: PIL.Image.Image,
        boxes_xyxy: np.ndarray | torch.Tensor,
        masks: np.ndarray | torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> TransformedSample:
        """Transform one sample.

        Args:
            image: PIL image of size W x H (converted to RGB).
            boxes_xyxy: ``[N, 4]`` boxes in pixels of the input image.
            masks: bool ``[N, H, W]`` instance masks.
            generator: Source of randomness for training; ``None`` draws a fresh seed (not
                reproducible). Ignored for validation.
        """
        pixels = tv_tensors.Image(F.pil_to_tensor(image.convert("RGB")))
        height, width = pixels.shape[-2:]
        boxes, instance_masks = _as_targets(boxes_xyxy, masks, height, width)

        if self.train:
            if generator is None:
                generator = torch.Generator()
                generator.seed()
            size = self.resize_choices[_randint(len(self.resize_choices), generator)]
            left = _randint(self.resolution - size + 1, generator)
            top = _randint(self.resolution - size + 1, generator)
            # Drawn last so enabling the flip leaves size and position of a given seed unchanged.
            flip = self.horizontal_flip and _randint(2, generator) == 1
        else:
            size, left, top, flip = self.resolution, 0, 0, False

        if flip:
            pixels, boxes, instance_masks = (
                F.horizontal_flip(t) for t in (pixels, boxes, instance_masks)
            )
        pixels = F.resize(pixels, [size, size], InterpolationMode.BILINEAR, antialias=True)
        boxes = F.resize(boxes, [size, size])
        if instance_masks.shape[0] > 0:
            instance_masks = F.resize(instance_masks, [size, size], InterpolationMode.NEAREST_EXACT)
        else:
            instance_masks = tv_tensors.Mask(torch.zeros(0, size, size, dtype=torch.uint8))
        padding = [left, top, self.resolution - size - left, self.resolution - size - top]
        if any(padding):
            pixels, boxes, instance_masks = (
                F.pad(t, padding, fill=0) for t in (pixels, boxes, instance_masks)
            )

        mean = torch.tensor(self.pixel_mean).view(3, 1, 1)
        std = torch.tensor(self.pixel_std).view(3, 1, 1)
        pixel_values = (pixels.as_subclass(torch.Tensor).float() / 255 - mean) / std
        return TransformedSample(
            pixel_values=pixel_values,
            boxes_xyxy=boxes.as_subclass(torch.Tensor).float(),
            masks=instance_masks.as_subclass(torch.Tensor).bool(),
            valid_region=(left, top, left + size, top + size),
        )


def build_transforms(
    resolution: int,
    train: bool,
    pixel_mean: tuple[float, float, float],
    pixel_std: tuple[float, float, float],
    scale_range: tuple[float, float] = (0.48, 0.98),
    horizontal_flip: bool = False,
) -> SampleTransform:
    """Build the train (random resize + pad, optional flip) or validation (resize) transform.

    Args:
        resolution: Side of the square model input, e.g. 1008 (SAM3) or 224 (tiny model).
        train: Random square resize and random-position zero padding if True, else plain resize.
        pixel_mean / pixel_std: the model's normalisation (its task spec's), in [0, 1] units.
        scale_range: Fractions of ``resolution`` bounding the training sizes (see module doc).
        horizontal_flip: Mirror training images with probability 0.5.
    """
    if int(resolution) != resolution or resolution < 16:
        raise ConfigError(f"resolution={resolution!r} must be an integer >= 16 (pixels).")
    return SampleTransform(
        resolution=int(resolution),
        train=train,
        resize_choices=train_resize_choices(resolution, scale_range),
        pixel_mean=tuple(pixel_mean),
        pixel_std=tuple(pixel_std),
        horizontal_flip=horizontal_flip,
    )


def _randint(high: int, generator: torch.Generator) -> int:
    return int(torch.randint(high, (1,), generator=generator))


def _to_tensor(values: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu()
    return torch.from_numpy(np.ascontiguousarray(values))


def _as_targets(
    boxes_xyxy: np.ndarray | torch.Tensor, masks: np.ndarray | torch.Tensor, height: int, width: int
) -> tuple[tv_tensors.BoundingBoxes, tv_tensors.Mask]:
    """Check shapes and wrap boxes and masks as tv_tensors on a ``height x width`` canvas."""
    boxes = _to_tensor(boxes_xyxy).to(torch.float32)
    mask_tensor = _to_tensor(masks)
    if boxes.numel() == 0:
        boxes = boxes.reshape(0, 4)
    if mask_tensor.numel() == 0 and boxes.shape[0] == 0:
        mask_tensor = torch.zeros(0, height, width, dtype=torch.uint8)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise DatasetError(f"Boxes must have shape [N, 4] (xyxy pixels); got {tuple(boxes.shape)}.")
    if mask_tensor.ndim != 3 or tuple(mask_tensor.shape) != (boxes.shape[0], height, width):
        raise DatasetError(
            f"Masks must have shape [N, H, W] = {[boxes.shape[0], height, width]} to match "
            f"{boxes.shape[0]} boxes and the {width}x{height} image; "
            f"got {tuple(mask_tensor.shape)}."
        )
    return (
        tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
        tv_tensors.Mask(mask_tensor.to(torch.uint8)),
    )
