"""Hungarian matching of SAM3 queries: the documented cost, minimised, per prompt."""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from sam3_lora.tasks.concept.matcher import match_queries


def _xyxy(box: np.ndarray) -> np.ndarray:
    cx, cy, w, h = box
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def _giou(box1: np.ndarray, box2: np.ndarray) -> float:
    """GIoU of two cxcywh boxes, from the definition."""
    a, b = _xyxy(box1), _xyxy(box2)
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(
        0.0, min(a[3], b[3]) - max(a[1], b[1])
    )
    union = area_a + area_b - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


def _cost(logit: float, box: np.ndarray, target: np.ndarray) -> float:
    """5 * L1 + 2 * focal cost - 2 * GIoU (alpha 0.25, gamma 2)."""
    p = 1 / (1 + math.exp(-logit))
    focal = -0.25 * (1 - p) ** 2 * math.log(p) + 0.75 * p**2 * math.log(1 - p)
    return 5 * np.abs(box - target).sum() + 2 * focal - 2 * _giou(box, target)


def _best_assignment_cost(cost: np.ndarray) -> float:
    """Brute force: the lowest total over every one-to-one assignment of min(Q, N) pairs."""
    num_queries, num_targets = cost.shape
    if num_targets <= num_queries:
        return min(
            sum(cost[queries[t], t] for t in range(num_targets))
            for queries in itertools.permutations(range(num_queries), num_targets)
        )
    return min(
        sum(cost[q, chosen[q]] for q in range(num_queries))
        for chosen in itertools.permutations(range(num_targets), num_queries)
    )


def _random_boxes(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """cxcywh boxes with centres in [0.2, 0.8] and sizes in [0.05, 0.4]."""
    return np.concatenate(
        [rng.uniform(0.2, 0.8, (*shape, 2)), rng.uniform(0.05, 0.4, (*shape, 2))], -1
    )


def test_matching_minimises_the_documented_cost() -> None:
    rng = np.random.default_rng(0)
    num_queries = 5
    logits = rng.normal(scale=3.0, size=(7, num_queries))
    boxes = _random_boxes(rng, 7, num_queries)
    # Fewer targets than queries, none, more than queries.
    targets = [_random_boxes(rng, n) for n in (2, 0, 6, 3, 4, 1, 5)]

    matches = match_queries(
        torch.tensor(logits), torch.tensor(boxes), [torch.tensor(t) for t in targets]
    )

    for b, (query_idx, target_idx) in enumerate(matches):
        n = len(targets[b])
        assert len(query_idx) == len(target_idx) == min(n, num_queries)
        if n == 0:
            continue
        cost = np.array(
            [
                [_cost(logits[b, q], boxes[b, q], targets[b][t]) for t in range(n)]
                for q in range(num_queries)
            ]
        )
        best = _best_assignment_cost(cost)
        got = cost[query_idx.numpy(), target_idx.numpy()].sum()
        assert abs(got - best) < 1e-9


def test_prompts_without_targets_get_no_matches() -> None:
    matches = match_queries(torch.randn(2, 5), torch.rand(2, 5, 4), [torch.zeros(0, 4)] * 2)

    assert [(len(q), len(t)) for q, t in matches] == [(0, 0), (0, 0)]
    assert all(q.dtype == torch.int64 and t.dtype == torch.int64 for q, t in matches)
