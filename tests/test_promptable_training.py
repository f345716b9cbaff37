"""The promptable parts together: COCO -> PromptDataset -> PromptableModel -> loss -> steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from sam3_lora.data.coco import CocoDataset
from sam3_lora.tasks.promptable.loss import PromptableLoss
from sam3_lora.tasks.promptable.module import PromptableModel
from sam3_lora.tasks.promptable.samples import PromptDataset, collate_prompt_samples
from sam3_lora.tasks.promptable.spec import ImageInput
from sam3_lora.tasks.promptable.tiny import create_tiny_sam2
from sam3_lora.tasks.promptable.validation import summarize, validation_step
from tests.data_factory import coco_dict, square_polygon, write_coco


@pytest.fixture
def one_thread() -> object:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def squares(tmp_path: Path) -> CocoDataset:
    """Two 96 x 64 images with three squares each."""
    images = [{"id": i, "file_name": f"{i}.png", "width": 96, "height": 64} for i in (1, 2)]
    annotations = [
        {
            "id": 10 * image + k,
            "image_id": image,
            "category_id": 1,
            "bbox": [4 + 30 * k, 8 + 6 * image, 20, 20],
            "segmentation": [square_polygon(4 + 30 * k, 8 + 6 * image, 20)],
            "area": 400,
            "iscrowd": 0,
        }
        for image in (1, 2)
        for k in range(3)
    ]
    return CocoDataset(
        write_coco(tmp_path / "squares", coco_dict(images=images, annotations=annotations))
    )


def _train(coco: CocoDataset, steps: int) -> tuple[list[float], dict[str, float], dict[str, float]]:
    loaded = create_tiny_sam2(seed=0)
    image_input = ImageInput.from_processor(loaded.processor)
    loader = DataLoader(
        PromptDataset(coco, image_input, train=True, seed=0),
        batch_size=2,
        collate_fn=collate_prompt_samples,
    )
    validation = [
        collate_prompt_samples([s for s in PromptDataset(coco, image_input, train=False)])
    ]
    module = PromptableModel(loaded.model, correction_rounds=1)
    criterion = PromptableLoss()
    before = summarize([validation_step(module, criterion, b) for b in validation])
    optimizer = torch.optim.AdamW(module.parameters(), lr=3e-3)
    module.train()
    losses = []
    for _ in range(steps):
        for batch in loader:
            loss = criterion(module(batch).steps, batch.target_masks)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    after = summarize([validation_step(module, criterion, b) for b in validation])
    return losses, before, after


def test_a_few_training_steps_lower_the_validation_loss(
    squares: CocoDataset, one_thread: None
) -> None:
    losses, before, after = _train(squares, steps=12)
    assert all(torch.isfinite(torch.tensor(losses)))
    # From scratch, masks need hundreds of steps (one batch, 800 steps: IoU 0.997, docs/sam2.md);
    # a dozen already lower the validation loss (4.50 -> 3.49 with this seed).
    assert after["val/loss"] < 0.9 * before["val/loss"]
    assert set(after) >= {"val/miou", "val/dice", "val/loss", "val/loss_mask_focal", "val/objects"}
    again, _, _ = _train(squares, steps=2)
    assert again == losses[:2]  # seeded end to end: data, prompts, clicks
