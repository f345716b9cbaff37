"""Prompt sampling of the promptable task on known masks (Meta's SAM2.1 semantics)."""

from __future__ import annotations

import pytest
import torch

from sam3_lora.tasks.promptable.prompts import (
    PointPrompts,
    PromptError,
    box_prompts,
    center_clicks,
    eval_prompts,
    group_prompts,
    mask_boxes,
    noisy_boxes,
    sample_corrective_clicks,
    sample_initial_prompts,
    sample_pixels,
    user_prompt,
)


def _rect(height: int, width: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    """bool [H, W] with rows y0..y1-1 and columns x0..x1-1 set."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _at(masks: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """masks [N, H, W] read at integer points [N, 2] (x, y)."""
    xy = points.long()
    return masks[torch.arange(len(masks)), xy[:, 1], xy[:, 0]]


def test_mask_boxes_are_inclusive_pixel_extents() -> None:
    square = _rect(16, 16, 2, 6, 3, 8)  # rows 2-5, columns 3-7
    ell = _rect(16, 16, 10, 11, 1, 15) | _rect(16, 16, 4, 11, 1, 2)
    boxes = mask_boxes(torch.stack([square, ell]))
    assert boxes.tolist() == [[3, 2, 7, 5], [1, 4, 14, 10]]


def test_box_prompts_are_corners_labelled_2_and_3() -> None:
    prompts = box_prompts(torch.tensor([[1.0, 2.0, 5.0, 6.0]]))
    assert prompts.points.tolist() == [[[1, 2], [5, 6]]]
    assert prompts.labels.tolist() == [[2, 3]]
    assert not prompts.multimask  # a box is two points: single-mask output


def test_box_noise_bounds_and_clamping() -> None:
    boxes = torch.tensor([[10.0, 20.0, 60.0, 40.0], [100.0, 50.0, 500.0, 450.0]])
    low = noisy_boxes(boxes, (512, 512), torch.zeros(2, 4))
    high = noisy_boxes(boxes, (512, 512), torch.full((2, 4), 1 - 1e-7))
    # 10 % of w = 50 / h = 20 for the small box; the 20 px bound for the large one (w = h = 400).
    torch.testing.assert_close(low[0], torch.tensor([5.0, 18.0, 55.0, 38.0]))
    torch.testing.assert_close(high[0], torch.tensor([15.0, 22.0, 65.0, 42.0]))
    torch.testing.assert_close(low[1], torch.tensor([80.0, 30.0, 480.0, 430.0]))
    torch.testing.assert_close(
        high[1], torch.tensor([120.0, 70.0, 511.0, 470.0]), atol=1e-3, rtol=0
    )
    middle = noisy_boxes(boxes, (512, 512), torch.full((2, 4), 0.5))
    torch.testing.assert_close(middle[:1], boxes[:1])

    generator = torch.Generator().manual_seed(0)
    edge = torch.tensor([[0.0, 0.0, 99.0, 9.0]]).repeat(500, 1)
    noisy = noisy_boxes(edge, (10, 100), torch.rand(500, 4, generator=generator))
    assert noisy.min() >= 0 and noisy[:, 0::2].max() <= 99 and noisy[:, 1::2].max() <= 9
    assert ((noisy - edge).abs() <= torch.tensor([9.9, 0.9, 9.9, 0.9]) + 1e-5).all()


def test_sample_pixels_picks_the_kth_pixel_uniformly() -> None:
    region = torch.zeros(1, 4, 4, dtype=torch.bool)
    region[0, 1, 2] = region[0, 2, 0] = region[0, 3, 3] = True  # flat 6, 8, 15
    picks = [sample_pixels(region, torch.tensor([u]))[0].item() for u in (0.0, 0.34, 0.67, 0.99)]
    assert picks == [6, 8, 15, 15]
    index, found = sample_pixels(torch.zeros(2, 3, 3, dtype=torch.bool), torch.tensor([0.2, 0.9]))
    assert index.tolist() == [0, 0] and not found.any()

    generator = torch.Generator().manual_seed(1)
    many = region.expand(3000, 4, 4)
    index, _ = sample_pixels(many, torch.rand(3000, generator=generator))
    counts = torch.bincount(index, minlength=16)
    assert set(counts.nonzero().flatten().tolist()) == {6, 8, 15}
    assert counts[[6, 8, 15]].min() > 850  # each ~1000 of 3000


def test_initial_prompts_follow_meta_and_are_reproducible() -> None:
    masks = torch.stack(
        [_rect(64, 64, 5 + i % 7, 30 + i % 11, 3 + i % 5, 40 + i % 13) for i in range(400)]
    )
    groups = sample_initial_prompts(masks, torch.Generator().manual_seed(3))
    again = sample_initial_prompts(masks, torch.Generator().manual_seed(3))
    for group, other in zip(groups, again, strict=True):
        assert torch.equal(group.object_index, other.object_index)
        assert torch.equal(group.prompts.points, other.prompts.points)

    boxes, clicks = groups
    assert boxes.prompts.labels.unique().tolist() == [2, 3] and boxes.prompts.num_points == 2
    assert clicks.prompts.labels.unique().tolist() == [1] and clicks.prompts.num_points == 1
    assert sorted(torch.cat([boxes.object_index, clicks.object_index]).tolist()) == list(range(400))
    assert 160 < len(boxes.object_index) < 240  # P(box) = 0.5

    points = clicks.prompts.points[:, 0]
    assert _at(masks[clicks.object_index], points).all()  # clicks land inside their masks
    exact = mask_boxes(masks[boxes.object_index])
    noisy = boxes.prompts.points.reshape(-1, 4)
    sides = (exact[:, 2:] - exact[:, :2]).repeat(1, 2)
    assert ((noisy - exact).abs() <= torch.clamp(0.1 * sides, max=20) + 1e-4).all()
    assert (noisy != exact).any()

    only_boxes = sample_initial_prompts(masks[:5], torch.Generator(), box_probability=1.0)
    assert len(only_boxes) == 1 and only_boxes[0].prompts.num_points == 2


def test_corrective_clicks_come_from_the_error_region() -> None:
    target = _rect(32, 32, 8, 24, 8, 24)
    missed = _rect(32, 32, 8, 24, 8, 16)  # right half missing: false negatives only
    spilled = _rect(32, 32, 4, 28, 4, 28)  # everything plus a ring: false positives only
    shifted = _rect(32, 32, 8, 24, 12, 28)  # both
    targets = torch.stack([target] * 4)
    predictions = torch.stack([missed, spilled, shifted, target])
    for seed in range(20):
        points, labels = sample_corrective_clicks(
            targets, predictions, torch.Generator().manual_seed(seed), gt_probability=0.0
        )
        fn = _at(targets & ~predictions, points)
        fp = _at(~targets & predictions, points)
        assert fn[0] and labels[0] == 1
        assert fp[1] and labels[1] == 0
        assert (fn[2] and labels[2] == 1) or (fp[2] and labels[2] == 0)
        assert not _at(targets, points[3:]).any() and labels[3] == 0  # perfect: background click

    points, labels = sample_corrective_clicks(
        targets, predictions, torch.Generator().manual_seed(0), gt_probability=1.0
    )
    assert _at(targets, points).all() and labels.tolist() == [1, 1, 1, 1]


def test_center_clicks_pick_the_point_farthest_from_the_border() -> None:
    target = _rect(20, 20, 3, 10, 5, 12)  # 7 x 7 square: centre (8, 6)
    points, labels = center_clicks(target[None])
    assert points.tolist() == [[8.0, 6.0]] and labels.tolist() == [1]
    # Prediction misses a 3-wide strip but spills into a 5 x 5 block: the FP is deeper -> negative.
    prediction = _rect(20, 20, 3, 10, 5, 9) | _rect(20, 20, 13, 18, 13, 18)
    points, labels = center_clicks(target[None], prediction[None])
    assert points.tolist() == [[15.0, 15.0]] and labels.tolist() == [0]


def test_eval_prompts_are_deterministic() -> None:
    masks = torch.stack([_rect(20, 20, 3, 10, 5, 12), _rect(20, 20, 0, 20, 0, 4)])
    (box,) = eval_prompts(masks, "box")
    assert box.prompts.points.reshape(-1, 4).tolist() == [[5, 3, 11, 9], [0, 0, 3, 19]]
    (point,) = eval_prompts(masks, "point")
    assert _at(masks, point.prompts.points[:, 0]).all() and point.prompts.multimask
    with pytest.raises(ValueError, match="unknown evaluation prompt"):
        eval_prompts(masks, "scribble")
    with pytest.raises(ValueError, match="empty"):
        eval_prompts(torch.zeros(1, 4, 4, dtype=torch.bool), "box")


def test_prompt_append_and_grouping() -> None:
    prompts = PointPrompts(torch.zeros(2, 1, 2), torch.ones(2, 1, dtype=torch.int32))
    assert prompts.multimask
    longer = prompts.append(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([0, 1]))
    assert longer.num_points == 2 and not longer.multimask
    assert longer.labels.tolist() == [[1, 0], [1, 1]] and longer.labels.dtype == torch.int32
    single = [
        longer.select(torch.tensor([0])),
        prompts.select(torch.tensor([1])),
        longer.select(torch.tensor([1])),
    ]
    groups = group_prompts(single)
    assert [g.object_index.tolist() for g in groups] == [[0, 2], [1]]
    with pytest.raises(ValueError, match="labels"):
        PointPrompts(torch.zeros(2, 1, 2), torch.ones(2, 2))


def test_user_prompts_are_checked_and_scaled_like_the_processor() -> None:
    prompt = user_prompt([10, 20, 110, 60], [[50, 40, 1], [0, 0, 0]], (80, 200), 100)
    torch.testing.assert_close(
        prompt.points, torch.tensor([[[5.0, 25.0], [55.0, 75.0], [25.0, 50.0], [0.0, 0.0]]])
    )
    assert prompt.labels.tolist() == [[2, 3, 1, 0]]

    bad = [
        ((None, [[5, 5, 2]]), "label 2.*1 \\(on the object\\) or 0"),
        (([10, 20, 300, 60], None), "does not lie inside the 200x80 image"),
        (([50, 20, 10, 60], None), "is empty.*not \\[x, y, width, height\\]"),
        ((None, [[500, 5, 1]]), "outside the 200x80 image"),
        ((None, None), "give a box"),
        (([1, 2, 3], None), "\\[x1, y1, x2, y2\\]"),
        ((None, [[1, float("nan"), 1]]), "NaN"),
        ((None, [5]), "\\[x, y, label\\]"),
    ]
    for (box, points), message in bad:
        with pytest.raises(PromptError, match=message):
            user_prompt(box, points, (80, 200), 100)
