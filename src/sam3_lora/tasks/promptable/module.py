"""The promptable task's model call: one ``forward(batch)`` from images to per-step masks.

:class:`PromptableModel` wraps a ``Sam2Model`` / ``Sam3TrackerModel`` (possibly a PEFT model
around it) so that DDP / FSDP wrap the whole call and nothing runs around it:

1. the image embeddings: once per image, through the vision encoder's own forward
   (``get_image_features``, not the ``@torch.no_grad()`` ``get_image_embeddings``), so gradients
   reach adapters in the image encoder; then, as ``Sam2Model.forward`` does, the no-memory
   embedding is added to the lowest-resolution level;
2. per prediction step, the prompt encoder and mask decoder for every object (the model's
   forward with ``image_embeddings=`` indexed per object), objects with prompts of one length
   decoded together; ``multimask_output`` by Meta's rule (three masks for at most one point);
3. in training (Meta's ``SAM2Train``): a sampled first prompt per object, then
   ``correction_rounds`` corrective clicks, each a new step; the previous step's best mask
   logits (highest predicted IoU) are fed back as the mask prompt (``input_masks``, not
   detached, as Meta's ``_iter_correct_pt_sampling``); mask logits of objects whose object
   score is not positive are replaced by -1024 (Meta's ``NO_OBJ_SCORE`` in
   ``_forward_sam_heads``), before the loss and the next click;
4. in evaluation: deterministic prompts (the mask's box without noise, or its centre-most
   pixel), optionally followed by centre-of-error clicks (Meta's evaluation sampling), no
   gating, so predictions equal transformers' inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sam3_lora.tasks.promptable.loss import MaskPrediction
from sam3_lora.tasks.promptable.prompts import (
    PointPrompts,
    PromptGroup,
    center_clicks,
    eval_prompts,
    sample_corrective_clicks,
    sample_initial_prompts,
)
from sam3_lora.tasks.promptable.samples import PromptBatch
from sam3_lora.tasks.promptable.spec import base_model

#: Meta's ``NO_OBJ_SCORE``: mask logit of an object predicted absent.
NO_OBJECT_SCORE = -1024.0
PROMPT_MODES = ("sample", "box", "point")


@dataclass
class PromptableOutputs:
    """Per prediction step, the :class:`MaskPrediction` of each group of objects.

    Attributes:
        steps: ``steps[s]`` covers every object of the batch once (step 0: the first prompt;
            step s: after s corrective clicks).
        num_objects: objects in the batch.
    """

    steps: list[list[MaskPrediction]]
    num_objects: int

    def final(self) -> list[MaskPrediction]:
        """The last step's predictions (after every corrective click)."""
        return self.steps[-1]


class PromptableModel(nn.Module):
    """Forward of the promptable task (see the module docstring).

    Args:
        model: ``Sam2Model`` / ``Sam3TrackerModel``, possibly PEFT-wrapped (kept as
            ``.network``, as the concept task's module keeps its model).
        correction_rounds: corrective clicks per object in training (Meta: 7).
        box_probability: chance that an object's first prompt is its box (Meta: 0.5).
        box_noise / box_noise_bound: box corner noise, fraction of the side and pixel cap.
        gt_click_probability: chance that a corrective click comes from the ground truth instead
            of the error region (Meta: 0.1).
        feed_back_masks: feed each step's mask logits to the next one (Meta: yes).
        gate_masks_by_object_score: -1024 mask logits where the object score is <= 0, in
            training (Meta: yes).
        eval_prompt: ``box`` or ``point``, the first prompt in evaluation.
        eval_correction_clicks: centre-of-error clicks after it in evaluation.
    """

    def __init__(
        self,
        model: nn.Module,
        correction_rounds: int = 7,
        box_probability: float = 0.5,
        box_noise: float = 0.1,
        box_noise_bound: float = 20.0,
        gt_click_probability: float = 0.1,
        feed_back_masks: bool = True,
        gate_masks_by_object_score: bool = True,
        eval_prompt: str = "box",
        eval_correction_clicks: int = 0,
    ) -> None:
        super().__init__()
        base_model(model)  # fail early on anything else
        if eval_prompt not in ("box", "point"):
            raise ValueError(f"eval_prompt must be `box` or `point`, got `{eval_prompt}`")
        if correction_rounds < 0 or eval_correction_clicks < 0:
            raise ValueError("correction_rounds and eval_correction_clicks must be >= 0")
        self.network = model
        self.correction_rounds = correction_rounds
        self.box_probability = box_probability
        self.box_noise = box_noise
        self.box_noise_bound = box_noise_bound
        self.gt_click_probability = gt_click_probability
        self.feed_back_masks = feed_back_masks
        self.gate_masks_by_object_score = gate_masks_by_object_score
        self.eval_prompt = eval_prompt
        self.eval_correction_clicks = eval_correction_clicks

    @property
    def sam(self) -> nn.Module:
        """The bare ``Sam2Model`` / ``Sam3TrackerModel``."""
        return base_model(self.network)

    def forward(
        self,
        batch: PromptBatch,
        prompt: str | None = None,
        correction_clicks: int | None = None,
        image_embeddings: list[Tensor] | None = None,
    ) -> PromptableOutputs:
        """Predict every object's mask, step by step.

        Args:
            batch: images and per-object target masks (used for prompts and clicks).
            prompt: ``sample`` (training prompts from ``batch.prompt_seed``), ``box`` or
                ``point`` (deterministic); default: ``sample`` in training mode, else
                ``eval_prompt``.
            correction_clicks: clicks after the first prompt; default ``correction_rounds``
                when sampling, else ``eval_correction_clicks``.
            image_embeddings: :meth:`image_embeddings` of the batch already computed (evaluation
                runs several prompt kinds on one encoding); default: computed here.

        Returns:
            ``correction_clicks + 1`` steps of predictions (none when the batch has no object).
        """
        mode = prompt or ("sample" if self.training else self.eval_prompt)
        if mode not in PROMPT_MODES:
            raise ValueError(f"prompt must be one of {PROMPT_MODES}, got `{mode}`")
        sampling = mode == "sample"
        if correction_clicks is None:
            correction_clicks = self.correction_rounds if sampling else self.eval_correction_clicks
        embeddings = image_embeddings
        if embeddings is None:
            embeddings = self.image_embeddings(batch.pixel_values)
        targets = batch.target_masks
        if batch.num_objects == 0:
            return PromptableOutputs(steps=[], num_objects=0)
        generator = torch.Generator().manual_seed(batch.prompt_seed) if sampling else None
        if sampling:
            groups = sample_initial_prompts(
                targets, generator, self.box_probability, self.box_noise, self.box_noise_bound
            )
        else:
            groups = eval_prompts(targets, mode)
        mask_inputs: list[Tensor | None] = [None] * len(groups)
        steps: list[list[MaskPrediction]] = []
        for step in range(correction_clicks + 1):
            predictions = [
                self.decode(
                    embeddings,
                    batch.object_image_index[group.object_index],
                    group.prompts,
                    mask_inputs=masks,
                    object_index=group.object_index,
                )
                for group, masks in zip(groups, mask_inputs, strict=True)
            ]
            steps.append(predictions)
            if step == correction_clicks:
                break
            for k, (group, prediction) in enumerate(zip(groups, predictions, strict=True)):
                best = prediction.best_mask_logits()  # [n, h, w]
                with torch.no_grad():
                    predicted = _resize(best.detach(), targets.shape[-2:]) > 0
                    truth = targets[group.object_index]
                    if sampling:
                        points, labels = sample_corrective_clicks(
                            truth, predicted, generator, self.gt_click_probability
                        )
                    else:
                        points, labels = center_clicks(truth, predicted)
                groups[k] = PromptGroup(group.object_index, group.prompts.append(points, labels))
                mask_inputs[k] = best[:, None] if self.feed_back_masks else None
        return PromptableOutputs(steps=steps, num_objects=batch.num_objects)

    def image_embeddings(self, pixel_values: Tensor) -> list[Tensor]:
        """Image embeddings of I images, as ``Sam2Model.forward`` computes them (with gradients).

        Returns:
            The FPN levels, high to low resolution: ``[I, C_l, h_l, w_l]``; the last one is the
            mask decoder's input, the others its high-resolution features.
        """
        sam = self.sam
        features = sam.get_image_features(pixel_values.to(sam.dtype), return_dict=True)
        levels = list(features.fpn_hidden_states)  # each [h * w, I, C]
        levels[-1] = levels[-1] + sam.no_memory_embedding
        count = pixel_values.shape[0]
        return [
            level.permute(1, 2, 0).reshape(count, -1, *size)
            for level, size in zip(levels, sam.backbone_feature_sizes, strict=False)
        ]

    def decode(
        self,
        embeddings: list[Tensor],
        image_index: Tensor,
        prompts: PointPrompts,
        mask_inputs: Tensor | None = None,
        object_index: Tensor | None = None,
    ) -> MaskPrediction:
        """Prompt encoder + mask decoder for n objects with prompts of one length.

        Args:
            embeddings: :meth:`image_embeddings` of the batch's images.
            image_index: long [n], each object's image.
            prompts: the n objects' point sequences (box corners labelled 2 / 3).
            mask_inputs: [n, 1, h, w] mask logits from a previous step, or None.
            object_index: long [n] rows of the objects in the batch (default 0..n-1).

        Returns:
            Their masks [n, M, h, w] (M = 3 when ``prompts.multimask``), IoU scores [n, M] and
            object-score logits [n, 1].
        """
        features = [level[image_index] for level in embeddings]
        if mask_inputs is not None:
            mask_inputs = mask_inputs.to(features[-1].dtype)
        outputs = self.sam(
            image_embeddings=features,
            input_points=prompts.points[:, None],
            input_labels=prompts.labels[:, None],
            input_masks=mask_inputs,
            multimask_output=prompts.multimask,
        )
        masks = outputs.pred_masks[:, 0]
        object_scores = outputs.object_score_logits[:, 0]
        if self.training and self.gate_masks_by_object_score:
            masks = torch.where(object_scores[:, :, None, None] > 0, masks, NO_OBJECT_SCORE)
        if object_index is None:
            object_index = torch.arange(len(image_index), device=image_index.device)
        return MaskPrediction(
            object_index=object_index,
            mask_logits=masks,
            iou_scores=outputs.iou_scores[:, 0],
            object_score_logits=object_scores,
            points=prompts.points,
            labels=prompts.labels,
        )


def _resize(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """[n, h, w] logits bilinearly resized to ``size``."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    resized = F.interpolate(
        logits[:, None].float(), size=size, mode="bilinear", align_corners=False
    )
    return resized[:, 0]
