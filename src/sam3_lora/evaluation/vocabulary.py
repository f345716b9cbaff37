"""One metric vocabulary for training validation (``val/<name>``) and ``sam3-lora evaluate``.

A name means the same thing wherever it appears: in ``metrics.csv``, TensorBoard,
``training_summary.json``, ``metrics.json``, the console tables and the HTML report. COCO AP / AR
keep pycocotools' names (``segm/AP`` ...) and cgF1 keeps Meta's (``cgF1``, ``IL_MCC`` ...).

Thresholded metrics count a prediction when its score (detection x presence) reaches
``evaluation.score_threshold`` and a mask pixel when its probability reaches
``evaluation.mask_threshold``.

The promptable task (SAM2 / SAM3 tracker) prompts every ground-truth instance and scores its one
mask: ``miou`` / ``dice`` / ``boundary_f1`` with its box, ``point_*`` with one click,
``points3_*`` with that click and two corrective clicks.
"""

from __future__ import annotations

#: Metric name -> what it measures.
METRICS: dict[str, str] = {
    "miou": "SAM3: mean IoU of the union of predicted masks against the union of ground-truth "
    "masks, over the (image, prompt) pairs with ground truth; SAM2 / SAM3 tracker: mean IoU of "
    "each instance's mask, the instance prompted with its box",
    "dice": "mean Dice of the same masks (SAM3: the unions over the pairs with ground truth; "
    "SAM2: each box-prompted instance)",
    "boundary_f1": "SAM2 / SAM3 tracker: mean boundary F-measure of the box-prompted instances "
    "(boundary pixels matched within 0.008 of the image diagonal, as DAVIS)",
    "point_miou": "SAM2 / SAM3 tracker: mean IoU of each instance's mask, the instance prompted "
    "with one click at its centre-most pixel",
    "point_dice": "mean Dice of the same one-click masks",
    "point_boundary_f1": "mean boundary F-measure of the same one-click masks",
    "points3_miou": "SAM2 / SAM3 tracker: mean IoU after three clicks: the centre click, then two "
    "corrective clicks at the centres of the largest errors (Meta's interactive evaluation)",
    "points3_dice": "mean Dice of the same three-click masks",
    "points3_boundary_f1": "mean boundary F-measure of the same three-click masks",
    "instances": "number of ground-truth instances prompted",
    "giou": "gRefCOCO's generalized IoU: the mean IoU over every prompt, a prompt without ground "
    "truth scoring 1 when nothing passes the threshold and 0 otherwise",
    "top1_iou": "threshold-free: the best instance IoU of the highest-scoring query's mask, over "
    "the pairs with ground truth",
    "recall_prompts": "share of the pairs with ground truth answered with at least one mask",
    "absent_fire_rate": "share of dataset categories absent from an image that get a mask",
    "negative_fire_rate": "share of hard-negative prompts (concepts outside the dataset) that get "
    "a mask",
    "presence_accuracy": "share of prompts whose presence logit (> 0) says correctly whether the "
    "concept is in the image",
    "retention": "share of the base model's detections (score >= threshold) on concepts outside "
    "the dataset that it finds on the image (the verified vocabulary) which the adapter still "
    "finds: an adapter detection of the same prompt at mask IoU >= 0.5 (base vs itself: 1)",
    "retention_iou": "mean IoU between the union of the base model's masks and the union of the "
    "adapter's on those (image, concept) pairs",
    "prompts": "number of (image, prompt) pairs scored (SAM2: instances prompted)",
    "loss": "the training loss on the validation data (its terms as loss_<term>)",
}

#: The names the promptable task reports (training validation has ``miou``, ``dice``,
#: ``point_miou``, ``point_dice``, ``prompts`` and ``loss``).
PROMPTABLE_METRICS = (
    *(
        f"{prefix}{score}"
        for prefix in ("", "point_", "points3_")
        for score in ("miou", "dice", "boundary_f1")
    ),
    "instances",
)

#: Metrics where lower is better (the rest: higher is better).
LOWER_IS_BETTER = frozenset({"absent_fire_rate", "negative_fire_rate", "loss"})


def describe(name: str) -> str:
    """What ``name`` (with or without the ``val/`` prefix) measures."""
    key = name.removeprefix("val/")
    if key.startswith("loss_"):
        return f"validation loss term {key.removeprefix('loss_')}"
    return METRICS.get(key, "")
