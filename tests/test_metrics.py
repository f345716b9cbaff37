"""Known-answer tests for sam3_lora.evaluation.metrics: mask IoU / Dice, COCO AP and SAM3's cgF1."""

from __future__ import annotations

import copy
import logging
import math

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from sam3_lora.errors import DatasetError
from sam3_lora.evaluation.metrics import (
    IOU_THRESHOLDS,
    cgf1_metrics,
    cgf1_per_category,
    coco_detection_metrics,
    count_datapoints,
    mask_dice,
    mask_iou,
    segmentation_to_rle,
    union_iou_dice,
    union_iou_dice_torch,
)

H = W = 20
CAT, DOG = 1, 2


def box_mask(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Bool [H, W] mask of rows y0:y1 and columns x0:x1."""
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def rle(mask: np.ndarray, as_str: bool = True) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    if as_str:
        encoded["counts"] = encoded["counts"].decode("ascii")
    return encoded


def instance(image_id: int, category_id: int, mask: np.ndarray, **extra: object) -> dict:
    encoded = rle(mask)
    return {
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": encoded,
        "bbox": mask_utils.toBbox(encoded).tolist(),
        "area": float(mask.sum()),
        **extra,
    }


# Ground truth: image 1 has two cats and a dog, image 2 one cat, image 3 nothing.
# Default datapoints (3 images x 2 categories): 3 with ground truth, 3 negatives.
MASK_A, MASK_B = box_mask(0, 10, 0, 10), box_mask(10, 20, 10, 20)
MASK_C, MASK_D = box_mask(0, 5, 12, 20), box_mask(5, 15, 5, 15)


def make_gt() -> dict:
    annotations = [
        instance(1, CAT, MASK_A),
        instance(1, CAT, MASK_B),
        instance(1, DOG, MASK_C),
        instance(2, CAT, MASK_D),
    ]
    for i, ann in enumerate(annotations):
        ann.update(id=i + 1, iscrowd=0)
    return {
        "images": [{"id": i, "height": H, "width": W, "file_name": f"{i}.jpg"} for i in (1, 2, 3)],
        "categories": [{"id": CAT, "name": "cat"}, {"id": DOG, "name": "dog"}],
        "annotations": annotations,
    }


def pred(image_id: int, category_id: int, mask: np.ndarray, score: float = 0.8) -> dict:
    """A result in the COCO results format with an RLE (str counts) mask."""
    return {
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": rle(mask),
        "score": score,
    }


def gt_as_results(gt: dict, score: float = 1.0) -> list[dict]:
    keys = ("image_id", "category_id", "segmentation", "bbox")
    return [{**{k: ann[k] for k in keys}, "score": score} for ann in gt["annotations"]]


def smoothed_f1(tp: int, fp: int, fn: int) -> float:
    """Meta's smoothed F1 (1e-4 in precision, recall and F1)."""
    precision, recall = tp / (tp + fp + 1e-4), tp / (tp + fn + 1e-4)
    return 2 * precision * recall / (precision + recall + 1e-4)


def mcc(tp: int, fp: int, fn: int, tn: int) -> float:
    """Matthews correlation with Meta's 1e-6 in the denominator."""
    return (tp * tn - fp * fn) / (math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)) + 1e-6)


# --- masks -----------------------------------------------------------------------------------


def test_half_overlapping_masks() -> None:
    a, b = box_mask(0, 10, 0, 10), box_mask(0, 10, 5, 15)  # 100 px each, 50 shared
    assert mask_iou(a, b) == pytest.approx(50 / 150)
    assert mask_dice(a, b) == pytest.approx(2 * 50 / 200)


def test_empty_masks() -> None:
    empty = np.zeros((H, W), dtype=bool)
    assert mask_iou(empty, empty) == 1.0 and mask_dice(empty, empty) == 1.0
    assert mask_iou(MASK_A, empty) == 0.0 and mask_dice(empty, MASK_A) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        mask_iou(MASK_A, MASK_A[:5])


def test_union_iou_dice() -> None:
    # two predictions covering the left and right halves of A, against A and a disjoint B
    pred = np.stack([box_mask(0, 10, 0, 5), box_mask(0, 10, 5, 10)])
    gt = np.stack([MASK_A, MASK_B])
    assert union_iou_dice(pred, gt) == pytest.approx((100 / 200, 200 / 300))
    none = np.zeros((0, H, W), dtype=bool)
    assert union_iou_dice(none, none) == (1.0, 1.0)
    assert union_iou_dice(none, gt) == (0.0, 0.0)


def test_union_iou_dice_torch_matches_numpy() -> None:
    torch = pytest.importorskip("torch")
    pred = np.stack([MASK_A, box_mask(0, 10, 5, 15), np.zeros((H, W), bool), MASK_C])
    gt = np.stack([MASK_A, MASK_A, np.zeros((H, W), bool), np.zeros((H, W), bool)])
    iou, dice = union_iou_dice_torch(torch.from_numpy(pred), torch.from_numpy(gt))
    expected = [union_iou_dice(p[None], g[None]) for p, g in zip(pred, gt, strict=True)]
    assert iou.tolist() == pytest.approx([e[0] for e in expected])
    assert dice.tolist() == pytest.approx([e[1] for e in expected])
    assert iou.tolist() == pytest.approx([1.0, 1 / 3, 1.0, 0.0])


# --- COCO AP ---------------------------------------------------------------------------------


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_coco_ground_truth_as_predictions(iou_type: str, capsys: pytest.CaptureFixture) -> None:
    gt = make_gt()
    results = gt_as_results(gt)
    gt_copy, results_copy = copy.deepcopy(gt), copy.deepcopy(results)
    metrics = coco_detection_metrics(gt, results, iou_type)
    assert metrics["AP"] == pytest.approx(1.0)
    assert metrics["AP50"] == pytest.approx(1.0) and metrics["AR@100"] == pytest.approx(1.0)
    assert math.isnan(metrics["AP_large"])  # every object is small: no ground truth there
    assert metrics["per_category_AP"] == pytest.approx({CAT: 1.0, DOG: 1.0})
    assert all(type(category_id) is int for category_id in metrics["per_category_AP"])
    assert gt == gt_copy and results == results_copy  # inputs untouched
    assert capsys.readouterr().out == ""  # COCOeval's prints are swallowed
    # a result for a prompt outside the dataset's categories does not count for AP
    negative = coco_detection_metrics(gt, [*results, pred(1, 99, MASK_A, score=1.0)], iou_type)
    assert negative["AP"] == pytest.approx(1.0)


def test_coco_empty_results_and_bytes_counts() -> None:
    gt = make_gt()
    metrics = coco_detection_metrics(gt, [], "segm")
    assert metrics["AP"] == 0.0 and metrics["AR@100"] == 0.0
    assert metrics["per_category_AP"] == {CAT: 0.0, DOG: 0.0}
    results = gt_as_results(gt)
    for result in results:
        result["segmentation"] = dict(result["segmentation"])
        result["segmentation"]["counts"] = result["segmentation"]["counts"].encode()
        del result["bbox"]
    assert coco_detection_metrics(gt, results, "segm")["AP"] == pytest.approx(1.0)


def test_coco_polygon_ground_truth() -> None:
    gt = make_gt()
    gt["annotations"][0]["segmentation"] = [[0, 0, 10, 0, 10, 10, 0, 10]]  # polygon around A
    del gt["annotations"][0]["area"]
    results = gt_as_results(gt)
    polygon_rle = segmentation_to_rle(gt["annotations"][0]["segmentation"], H, W)
    results[0]["segmentation"] = polygon_rle  # compressed RLE, bytes counts
    assert coco_detection_metrics(gt, results, "segm")["AP"] == pytest.approx(1.0)


def test_coco_result_on_unknown_image() -> None:
    results = gt_as_results(make_gt())
    results[0]["image_id"] = 42
    with pytest.raises(DatasetError, match="image_id=42"):
        coco_detection_metrics(make_gt(), results, "bbox")


# --- cgF1 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_cgf1_ground_truth_as_predictions(iou_type: str) -> None:
    metrics = cgf1_metrics(make_gt(), gt_as_results(make_gt()), iou_type)
    expected = smoothed_f1(tp=4, fp=0, fn=0) * mcc(tp=3, fp=0, fn=0, tn=3)
    for name in ("cgF1", "cgF1@50", "cgF1@75"):
        assert metrics[name] == pytest.approx(expected, abs=1e-9)
    assert metrics["cgF1"] == pytest.approx(1.0, abs=1e-3)
    assert (metrics["IL_TP"], metrics["IL_FP"], metrics["IL_FN"], metrics["IL_TN"]) == (3, 0, 0, 3)
    assert (metrics["TP@50"], metrics["FP@75"], metrics["FN@75"]) == (4, 0, 0)


def test_cgf1_empty_predictions() -> None:
    metrics = cgf1_metrics(make_gt(), [])
    assert metrics["cgF1"] == 0.0 and metrics["positive_micro_F1"] == 0.0
    assert metrics["IL_MCC"] == 0.0  # IL_TP = IL_FP = 0: numerator and one factor are 0
    assert (metrics["IL_FN"], metrics["IL_TN"], metrics["FN@50"]) == (3, 3, 4)
    assert math.isnan(metrics["positive_macro_F1"])


def test_cgf1_prediction_on_absent_prompt_lowers_il_mcc() -> None:
    gt = make_gt()
    results = gt_as_results(gt)
    results.append(pred(3, CAT, MASK_A, score=0.9))
    metrics = cgf1_metrics(gt, results)
    assert (metrics["IL_TP"], metrics["IL_FP"], metrics["IL_FN"], metrics["IL_TN"]) == (3, 1, 0, 2)
    assert metrics["IL_MCC"] == pytest.approx(mcc(tp=3, fp=1, fn=0, tn=2))  # 6 / sqrt(72)
    assert metrics["IL_MCC"] == pytest.approx(6 / math.sqrt(72), abs=1e-6)
    # the false positive is on a negative datapoint: positive_micro_F1 keeps its value, F1 drops
    assert metrics["positive_micro_F1"] == pytest.approx(smoothed_f1(4, 0, 0))
    assert metrics["F1@50"] == pytest.approx(smoothed_f1(4, 1, 0))
    assert metrics["cgF1"] == pytest.approx(smoothed_f1(4, 0, 0) * mcc(3, 1, 0, 2))


def test_cgf1_negative_prompt_outside_gt_categories() -> None:
    gt = make_gt()
    negative = 99  # a concept prompted by the evaluator that the dataset does not have
    datapoints = [(image["id"], c) for image in gt["images"] for c in (CAT, DOG, negative)]
    results = gt_as_results(gt)
    results.append(pred(1, negative, MASK_B, score=0.7))
    metrics = cgf1_metrics(gt, results, datapoints=datapoints)
    assert metrics["num_datapoints"] == 9
    assert (metrics["IL_TP"], metrics["IL_FP"], metrics["IL_FN"], metrics["IL_TN"]) == (3, 1, 0, 5)
    assert metrics["IL_MCC"] == pytest.approx(mcc(tp=3, fp=1, fn=0, tn=5))


def test_cgf1_score_threshold() -> None:
    gt = make_gt()
    results = gt_as_results(gt)
    perfect = cgf1_metrics(gt, results)
    below = [pred(3, CAT, MASK_A, score=0.49), pred(1, CAT, MASK_D, score=0.3)]
    assert cgf1_metrics(gt, results + below) == perfect
    # a score exactly at the threshold counts (score >= 0.5)
    at = [{**below[0], "score": 0.5}]
    assert cgf1_metrics(gt, results + at)["IL_FP"] == 1
    assert cgf1_metrics(gt, results + at, score_threshold=0.6)["IL_FP"] == 0


def hand_built_results() -> list[dict]:
    return [
        pred(1, CAT, box_mask(0, 10, 0, 8)),  # IoU 0.8 with A
        pred(1, CAT, box_mask(10, 20, 10, 16)),  # IoU 0.6 with B
        pred(1, CAT, box_mask(0, 5, 15, 20)),  # overlaps neither cat: FP
        # (1, DOG): no prediction for C -> FN
        pred(2, CAT, MASK_D),  # IoU 1
        pred(2, CAT, box_mask(16, 20, 0, 4)),  # FP
        pred(3, CAT, MASK_A),  # negative datapoint: IL_FP
    ]


def test_cgf1_hand_built_positive_micro_f1() -> None:
    metrics = cgf1_metrics(make_gt(), hand_built_results())
    # IoU 0.5: TP = 2 + 1, FP on datapoints with ground truth = 1 + 1, FN = 1 (the dog)
    # IoU 0.75: the 0.6 match fails: TP = 1 + 1, FP = 2 + 1, FN = 1 (B) + 1 (dog)
    assert (metrics["TP@50"], metrics["positive_micro_FP@50"], metrics["FN@50"]) == (3, 2, 1)
    assert (metrics["TP@75"], metrics["positive_micro_FP@75"], metrics["FN@75"]) == (2, 3, 2)
    assert (metrics["FP@50"], metrics["FP@75"]) == (3, 4)  # plus the one on image 3
    f1_50, f1_75 = 2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4), 2 * (2 / 5) * (2 / 4) / (2 / 5 + 2 / 4)
    assert metrics["positive_micro_F1@50"] == pytest.approx(f1_50, abs=1e-4)
    assert metrics["positive_micro_F1@75"] == pytest.approx(f1_75, abs=1e-4)
    assert metrics["positive_micro_F1@50"] == pytest.approx(smoothed_f1(3, 2, 1))
    assert metrics["positive_micro_F1@75"] == pytest.approx(smoothed_f1(2, 3, 2))
    # IL: TP (1,cat) (2,cat); FN (1,dog); FP (3,cat); TN (2,dog) (3,dog) -> MCC = 3 / 9
    assert metrics["IL_MCC"] == pytest.approx(1 / 3, abs=1e-6)
    assert metrics["cgF1@50"] == pytest.approx(smoothed_f1(3, 2, 1) * mcc(2, 1, 1, 2))
    # thresholds 0.50..0.60 accept the 0.6 match, 0.65..0.80 the 0.8 one, 0.85.. only IoU 1
    per_threshold = [smoothed_f1(*c) for c in [(3, 2, 1)] * 3 + [(2, 3, 2)] * 4 + [(1, 4, 3)] * 3]
    assert metrics["cgF1"] == pytest.approx(np.mean(per_threshold) * mcc(2, 1, 1, 2))
    # positive_macro_F1: mean over datapoints with gt and predictions of their own F1
    assert metrics["positive_macro_F1@50"] == pytest.approx(
        (smoothed_f1(2, 1, 0) + smoothed_f1(1, 1, 0)) / 2
    )


def test_cgf1_hungarian_matching_on_iou() -> None:
    # Boxes on one row: P1 overlaps G1 best (IoU 9/11) but also G2 (7/13); P2 only G1 (0.8).
    # Greedy by IoU would give P1-G1 and leave P2 unmatched; Hungarian maximises the sum:
    # P1-G2 (0.54) + P2-G1 (0.8), two TPs at IoU 0.5, one at 0.75.
    gt = {
        "images": [{"id": 1, "height": H, "width": W}],
        "categories": [{"id": CAT, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": CAT, "bbox": [0, 0, 10, 10], "area": 100},
            {"id": 2, "image_id": 1, "category_id": CAT, "bbox": [4, 0, 10, 10], "area": 100},
        ],
    }
    results = [
        {"image_id": 1, "category_id": CAT, "bbox": [1, 0, 10, 10], "score": 0.9},
        {"image_id": 1, "category_id": CAT, "bbox": [0, 0, 8, 10], "score": 0.6},
    ]
    ious = mask_utils.iou(
        [r["bbox"] for r in results], [a["bbox"] for a in gt["annotations"]], [0, 0]
    )
    assert ious == pytest.approx(np.array([[9 / 11, 7 / 13], [0.8, 4 / 14]]))
    counts = count_datapoints(gt, results, "bbox")
    assert IOU_THRESHOLDS[[0, 1, 5, 7]] == pytest.approx([0.5, 0.55, 0.75, 0.85])
    assert counts.tp[0][[0, 1, 5, 7]].tolist() == [2, 1, 1, 0]


def test_cgf1_crowd_ground_truth_is_dropped() -> None:
    gt = make_gt()
    gt["annotations"][2]["iscrowd"] = 1  # the dog
    metrics = cgf1_metrics(gt, gt_as_results(gt))
    assert (metrics["IL_TP"], metrics["IL_FP"], metrics["IL_TN"]) == (2, 1, 3)
    assert metrics["FP@50"] == 1 and metrics["positive_micro_FP@50"] == 0


def test_cgf1_per_category_and_ignored_results(caplog: pytest.LogCaptureFixture) -> None:
    results = [*hand_built_results(), pred(2, 7, MASK_D, score=1.0)]  # category 7: no datapoint
    with caplog.at_level(logging.WARNING):
        per_category = cgf1_per_category(make_gt(), results)
    assert "ignored 1 results" in caplog.text
    assert set(per_category) == {CAT, DOG}
    cat, dog = per_category[CAT], per_category[DOG]
    assert (cat["TP@50"], cat["positive_micro_FP@50"], cat["FN@50"]) == (3, 2, 0)
    assert (cat["IL_TP"], cat["IL_FP"], cat["IL_TN"]) == (2, 1, 0)
    assert (dog["IL_FN"], dog["IL_TN"], dog["cgF1"]) == (1, 2, 0.0)
