"""Tests for the joint image / box / mask transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sam3_lora.data.synthetic import draw_shapes_image
from sam3_lora.data.transforms import TransformedSample, build_transforms, train_resize_choices
from sam3_lora.errors import ConfigError, DatasetError
from sam3_lora.tasks.concept.spec import PIXEL_MEAN, PIXEL_STD

SAM3_NORMALISATION = {"pixel_mean": PIXEL_MEAN, "pixel_std": PIXEL_STD}

RESOLUTION = 224


@pytest.fixture(scope="module")
def sample() -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """A non-square image with overlapping shapes; boxes are the masks' tight boxes."""
    pixels, instances = draw_shapes_image(np.random.default_rng(1), "shifted", 256, (4, 5))
    pixels = pixels[:, :200]  # 200 x 256 (W x H): the resize changes the aspect ratio
    masks = np.stack([i.mask[:, :200] for i in instances])
    masks = masks[masks.any(axis=(1, 2))]
    boxes = np.array([_tight_box(torch.from_numpy(m)) for m in masks], dtype=np.float32)
    return Image.fromarray(pixels), boxes, masks


def _tight_box(mask: torch.Tensor) -> list[float]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1.0, ys.max().item() + 1.0]


def _check_sample(out: TransformedSample, num_instances: int) -> None:
    assert out.pixel_values.shape == (3, RESOLUTION, RESOLUTION)
    assert out.pixel_values.dtype == torch.float32
    assert out.boxes_xyxy.shape == (num_instances, 4) and out.boxes_xyxy.dtype == torch.float32
    assert out.masks.shape == (num_instances, RESOLUTION, RESOLUTION)
    assert out.masks.dtype == torch.bool
    for box, mask in zip(out.boxes_xyxy, out.masks, strict=True):
        # A corner thinner than one output pixel (a rotated rectangle's, a triangle's apex)
        # vanishes when the mask is down-sampled,
        # so the mask's tight box may sit up to 2 px inside the transformed box.
        assert torch.allclose(torch.tensor(_tight_box(mask)), box, atol=2.0), (
            box,
            _tight_box(mask),
        )


def test_resize_choices_follow_meta() -> None:
    assert train_resize_choices(1008) == list(range(480, 993, 32))
    assert train_resize_choices(224) == list(range(105, 218, 7))
    with pytest.raises(ConfigError):
        train_resize_choices(224, (0.5, 1.5))


@pytest.mark.parametrize("seed", range(4))
def test_train_transform_keeps_masks_and_boxes_together(sample, seed: int) -> None:
    image, boxes, masks = sample
    transform = build_transforms(RESOLUTION, train=True, **SAM3_NORMALISATION, horizontal_flip=True)
    out = transform(image, boxes, masks, torch.Generator().manual_seed(seed))
    _check_sample(out, len(boxes))

    x0, y0, x1, y1 = out.valid_region
    assert x1 - x0 == y1 - y0 and x1 - x0 in train_resize_choices(RESOLUTION)
    assert min(x0, y0) >= 0 and max(x1, y1) <= RESOLUTION
    inside = torch.zeros(RESOLUTION, RESOLUTION, dtype=torch.bool)
    inside[y0:y1, x0:x1] = True
    assert torch.all(out.pixel_values[:, ~inside] == -1.0)  # zero padding, normalised
    assert out.pixel_values[:, inside].max() > -1.0
    assert not out.masks[:, ~inside].any()


def test_val_transform_resizes_to_square(sample) -> None:
    image, boxes, masks = sample
    out = build_transforms(RESOLUTION, train=False, **SAM3_NORMALISATION)(
        image, torch.from_numpy(boxes), masks
    )
    _check_sample(out, len(boxes))
    assert out.valid_region == (0, 0, RESOLUTION, RESOLUTION)
    scale = torch.tensor([RESOLUTION / 200, RESOLUTION / 256] * 2)
    assert torch.allclose(out.boxes_xyxy, torch.from_numpy(boxes) * scale)
    white = Image.new("RGB", (50, 30), (255, 255, 255))
    assert torch.all(
        build_transforms(32, False, **SAM3_NORMALISATION)(white, [], []).pixel_values == 1.0
    )


def test_flip_mirrors_inside_the_valid_region(sample) -> None:
    image, boxes, masks = sample
    plain = build_transforms(RESOLUTION, train=True, **SAM3_NORMALISATION)
    flipping = build_transforms(RESOLUTION, train=True, **SAM3_NORMALISATION, horizontal_flip=True)
    flipped_seen = unflipped_seen = False
    for seed in range(8):
        reference = plain(image, boxes, masks, torch.Generator().manual_seed(seed))
        out = flipping(image, boxes, masks, torch.Generator().manual_seed(seed))
        assert out.valid_region == reference.valid_region
        if torch.equal(out.boxes_xyxy, reference.boxes_xyxy):
            unflipped_seen = True
            assert torch.equal(out.masks, reference.masks)
            continue
        flipped_seen = True
        x0, _, x1, _ = out.valid_region
        mirrored = reference.boxes_xyxy[:, [2, 1, 0, 3]] * torch.tensor(
            [-1, 1, -1, 1]
        ) + torch.tensor([x0 + x1, 0, x0 + x1, 0])
        assert torch.allclose(out.boxes_xyxy, mirrored, atol=1e-3)
        window = (slice(None), slice(None), slice(x0, x1))
        assert torch.allclose(
            out.pixel_values[window], reference.pixel_values[window].flip(-1), atol=2 / 255 * 2
        )
    assert flipped_seen and unflipped_seen


def test_generator_makes_it_reproducible_without_global_rng(sample) -> None:
    image, boxes, masks = sample
    transform = build_transforms(RESOLUTION, train=True, **SAM3_NORMALISATION, horizontal_flip=True)
    global_state = torch.random.get_rng_state()
    first = transform(image, boxes, masks, torch.Generator().manual_seed(5))
    again = transform(image, boxes, masks, torch.Generator().manual_seed(5))
    assert torch.equal(torch.random.get_rng_state(), global_state)
    assert torch.equal(first.pixel_values, again.pixel_values)
    assert torch.equal(first.masks, again.masks) and first.valid_region == again.valid_region
    regions = {
        transform(image, boxes, masks, torch.Generator().manual_seed(s)).valid_region
        for s in range(6)
    }
    assert len(regions) > 1


@pytest.mark.parametrize("train", [True, False])
def test_no_instances(train: bool) -> None:
    image = Image.new("RGB", (64, 48))
    out = build_transforms(RESOLUTION, train=train, **SAM3_NORMALISATION)(
        image, np.zeros((0, 4)), np.zeros((0, 48, 64), dtype=bool), torch.Generator()
    )
    _check_sample(out, 0)


def test_mismatched_masks_raise_dataset_error(sample) -> None:
    image, boxes, masks = sample
    with pytest.raises(DatasetError, match="Masks must have shape"):
        build_transforms(RESOLUTION, train=False, **SAM3_NORMALISATION)(image, boxes, masks[:, :10])
    with pytest.raises(DatasetError, match="Boxes must have shape"):
        build_transforms(RESOLUTION, train=False, **SAM3_NORMALISATION)(image, boxes[:, :3], masks)
