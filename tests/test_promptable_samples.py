"""Promptable samples from COCO: processor-identical images, objects, caps, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sam3_lora.data.coco import CocoDataset
from sam3_lora.tasks.promptable.samples import PromptDataset, collate_prompt_samples
from sam3_lora.tasks.promptable.spec import ImageInput
from sam3_lora.tasks.promptable.tiny import tiny_sam2_processor, tiny_sam3_tracker_processor
from tests.data_factory import coco_dict, square_polygon, write_coco

SAM2_INPUT = ImageInput(64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture
def coco(tmp_path: Path) -> CocoDataset:
    """data_factory's COCO (two images) plus an image holding only a crowd instance."""
    data = coco_dict()
    data["images"].append({"id": 9, "file_name": "c.png", "width": 32, "height": 24})
    data["annotations"].append(
        {
            "id": 20,
            "image_id": 9,
            "category_id": 1,
            "bbox": [1, 1, 4, 4],
            "segmentation": [square_polygon(1, 1, 4)],
            "area": 16,
            "iscrowd": 1,
        }
    )
    return CocoDataset(write_coco(tmp_path / "split", data))


@pytest.fixture
def crowded(tmp_path: Path) -> CocoDataset:
    """One 64 x 48 image with six squares."""
    annotations = [
        {
            "id": 100 + k,
            "image_id": 1,
            "category_id": 1 + k % 2,
            "bbox": [2 + 10 * k, 4, 8, 8],
            "segmentation": [square_polygon(2 + 10 * k, 4, 8)],
            "area": 64,
            "iscrowd": 0,
        }
        for k in range(6)
    ]
    data = coco_dict(
        images=[{"id": 1, "file_name": "many.png", "width": 64, "height": 48}],
        annotations=annotations,
    )
    return CocoDataset(write_coco(tmp_path / "crowded", data))


@pytest.mark.parametrize("family", ["sam2", "sam3_tracker"])
def test_images_are_what_the_models_processor_gives(coco: CocoDataset, family: str) -> None:
    processor = tiny_sam2_processor(64) if family == "sam2" else tiny_sam3_tracker_processor(56)
    image_input = ImageInput.from_processor(processor)
    dataset = PromptDataset(coco, image_input, train=False)
    sample = dataset[0]
    expected = processor(images=coco.load_image(0), return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(sample.pixel_values, expected, atol=1e-5, rtol=0)


def test_objects_masks_and_boxes(coco: CocoDataset) -> None:
    dataset = PromptDataset(coco, SAM2_INPUT, train=False)
    assert len(dataset) == 2 and dataset.indices == [0, 1]  # the crowd-only image is skipped
    first, second = dataset[0], dataset[1]
    assert first.masks.shape == (2, 64, 64) and first.masks.dtype == torch.bool
    assert first.annotation_ids.tolist() == [10, 11] and first.category_ids.tolist() == [1, 2]
    assert first.original_size == (24, 32)
    # The 8 x 8 square at (4, 4) in 32 x 24 -> x 8..24, y 10.67..32 at 64 px.
    torch.testing.assert_close(first.boxes[0], torch.tensor([8.0, 32 / 3, 24.0, 32.0]))
    ys, xs = first.masks[0].nonzero().unbind(1)
    assert (xs.min().item(), xs.max().item()) == (8, 23)
    assert abs(ys.min().item() - 32 / 3) <= 1 and abs(ys.max().item() + 1 - 32) <= 1
    # Image 7: the crowd RLE is left out; the box-only instance [10, 5, 10, 5] becomes its box.
    assert second.annotation_ids.tolist() == [13]
    ys, xs = second.masks[0].nonzero().unbind(1)
    assert (xs.min().item(), xs.max().item() + 1) == (20, 40)
    assert second.masks[0].sum() == (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)


def test_object_cap_is_random_per_epoch_in_training_and_fixed_in_validation(
    crowded: CocoDataset,
) -> None:
    validation = PromptDataset(crowded, SAM2_INPUT, train=False, max_objects_per_image=3)
    assert validation[0].annotation_ids.tolist() == [100, 101, 102]
    training = PromptDataset(crowded, SAM2_INPUT, train=True, max_objects_per_image=3, seed=1)
    subsets = set()
    for epoch in range(6):
        training.set_epoch(epoch)
        sample = training[0]
        again = training[0]
        assert torch.equal(sample.masks, again.masks) and sample.seed == again.seed
        assert len(sample.annotation_ids) == 3
        subsets.add(tuple(sample.annotation_ids.tolist()))
    assert len(subsets) > 1
    assert (
        len(PromptDataset(crowded, SAM2_INPUT, train=False, max_objects_per_image=None)[0].masks)
        == 6
    )
    with pytest.raises(ValueError, match="max_objects_per_image"):
        PromptDataset(crowded, SAM2_INPUT, train=True, max_objects_per_image=0)


def test_horizontal_flip_mirrors_image_masks_and_boxes(crowded: CocoDataset) -> None:
    plain = PromptDataset(crowded, SAM2_INPUT, train=True, max_objects_per_image=None, seed=0)
    flipping = PromptDataset(
        crowded, SAM2_INPUT, train=True, max_objects_per_image=None, horizontal_flip=True, seed=0
    )
    seen = set()
    for epoch in range(8):
        plain.set_epoch(epoch)
        flipping.set_epoch(epoch)
        a, b = plain[0], flipping[0]
        flipped = not torch.equal(a.masks, b.masks)
        seen.add(flipped)
        if flipped:
            assert torch.equal(a.masks.flip(-1), b.masks)
            torch.testing.assert_close(a.pixel_values.flip(-1), b.pixel_values)
            x1, y1, x2, y2 = a.boxes.unbind(1)
            torch.testing.assert_close(torch.stack([64 - x2, y1, 64 - x1, y2], 1), b.boxes)
    assert seen == {True, False}
    validation = PromptDataset(crowded, SAM2_INPUT, train=False, horizontal_flip=True)
    assert torch.equal(validation[0].masks, PromptDataset(crowded, SAM2_INPUT, False)[0].masks)


def test_collate_builds_a_prompt_batch(coco: CocoDataset) -> None:
    dataset = PromptDataset(coco, SAM2_INPUT, train=True, seed=5)
    batch = collate_prompt_samples([dataset[0], dataset[1]])
    assert batch.num_images == 2 and batch.num_prompts == batch.num_objects == 3
    assert batch.pixel_values.shape == (2, 3, 64, 64)
    assert batch.object_image_index.tolist() == [0, 0, 1]
    assert batch.target_masks.shape == (3, 64, 64) and batch.target_boxes.shape == (3, 4)
    assert batch.annotation_ids.tolist() == [10, 11, 13] and batch.image_indices == [0, 1]
    again = collate_prompt_samples([dataset[0], dataset[1]])
    assert again.prompt_seed == batch.prompt_seed
    dataset.set_epoch(1)
    assert collate_prompt_samples([dataset[0], dataset[1]]).prompt_seed != batch.prompt_seed
    moved = batch.to("cpu")
    assert (
        torch.equal(moved.target_masks, batch.target_masks)
        and moved.prompt_seed == batch.prompt_seed
    )
    assert np.isfinite(batch.pixel_values.numpy()).all()
