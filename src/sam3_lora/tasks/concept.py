"""SAM3's concept task: text-prompted detection + instance segmentation on ``Sam3Model``.

The task takes :class:`~sam3_lora.data.prompts.ConceptBatch` es and returns model outputs,
losses and validation statistics; it knows nothing of files or training loops.

Compute sharing: each image's vision features are computed once per step and indexed for all of
its prompts (``Sam3Model(vision_embeds=...)``); each distinct prompt text is encoded once per step
(``text_embeds=``).

Deviations from Meta's training, forced by ``transformers``' ``Sam3Model``:

- ``Sam3Model.forward`` returns only the final decoder layer (boxes in xyxy). The per-layer logits,
  boxes and presence logits for the auxiliary losses are captured with forward hooks on its own
  submodules (``detr_decoder``, ``detr_decoder.box_head``, ``dot_product_scoring``): the model is
  run once, as is, and nothing of it is re-implemented.
- Meta also trains a one-to-many head (200 extra queries); ``Sam3Model`` has none, so there is no
  one-to-many loss.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftModel
from torch import Tensor
from transformers import Sam3Model
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput, inverse_sigmoid

from sam3_lora.data.prompts import ConceptBatch
from sam3_lora.errors import AdapterError, CheckpointError
from sam3_lora.lora import load_adapter_weights_strict, save_lora_weights
from sam3_lora.tasks.losses import ConceptOutputs, PromptTarget, Sam3ConceptLoss

TEXT_LENGTH = 32


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside an Accelerate / DDP / torch.compile wrapper."""
    while hasattr(model, "module"):
        model = model.module
    return getattr(model, "_orig_mod", model)


def load_model_weights_strict(model: torch.nn.Module, weights_file: Path) -> None:
    """Load a full ``model.safetensors`` into ``model``; any key difference is an error."""
    from safetensors.torch import load_file

    if not Path(weights_file).is_file():
        raise CheckpointError(f"{weights_file} not found")
    state = load_file(str(weights_file))
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise CheckpointError(f"{weights_file} does not match the model: {error}") from None
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{weights_file} does not match the model: missing {missing[:4]}, "
            f"unexpected {result.unexpected_keys[:4]}"
        )


def base_sam3(model: torch.nn.Module) -> Sam3Model:
    """The ``Sam3Model`` inside a PEFT / Accelerate / DDP wrapper."""
    while True:
        if isinstance(model, Sam3Model):
            return model
        if isinstance(model, PeftModel):
            model = model.get_base_model()
        elif hasattr(model, "module"):
            model = model.module
        else:
            raise TypeError(f"expected a Sam3Model (possibly wrapped), got {type(model).__name__}")


def encode_prompts(
    model: torch.nn.Module, tokenizer: object, prompts: list[str], device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Encode each distinct prompt text once.

    Returns:
        features [U, T, D], attention mask [U, T] and, per prompt, the row of its text [B].
    """
    unique = list(dict.fromkeys(prompts))
    tokens = tokenizer(
        unique,
        padding="max_length",
        max_length=TEXT_LENGTH,
        truncation=True,
        return_tensors="pt",
    ).to(device)
    features = model.get_text_features(
        input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
    ).pooler_output
    position = {text: i for i, text in enumerate(unique)}
    index = torch.tensor([position[p] for p in prompts], device=device)
    return features, tokens["attention_mask"], index


def select_images(vision: Sam3VisionEncoderOutput, image_index: Tensor) -> Sam3VisionEncoderOutput:
    """The vision features of each prompt's image, computed once per image and indexed."""
    return Sam3VisionEncoderOutput(
        fpn_hidden_states=tuple(f[image_index] for f in vision.fpn_hidden_states),
        fpn_position_encoding=tuple(p[image_index] for p in vision.fpn_position_encoding),
    )


@dataclass
class _LayerCapture:
    decoder: object = None
    box_offsets: Tensor | None = None
    logits: Tensor | None = None
    handles: list = field(default_factory=list)


@contextmanager
def capture_decoder_layers(model: Sam3Model) -> Iterator[_LayerCapture]:
    """Record every decoder layer's hidden states, boxes and logits during one forward."""
    capture = _LayerCapture()

    def on_decoder(_module: object, _args: object, output: object) -> None:
        capture.decoder = output

    def on_box_head(_module: object, args: tuple, output: Tensor) -> None:
        if args[0].dim() == 4:  # the all-layers call in Sam3Model.forward, not the per-layer one
            capture.box_offsets = output

    def on_scoring(_module: object, _args: object, output: Tensor) -> None:
        capture.logits = output

    capture.handles = [
        model.detr_decoder.register_forward_hook(on_decoder),
        model.detr_decoder.box_head.register_forward_hook(on_box_head),
        model.dot_product_scoring.register_forward_hook(on_scoring),
    ]
    try:
        yield capture
    finally:
        for handle in capture.handles:
            handle.remove()


class ConceptTask:
    """Forward, loss and validation statistics of text-prompted SAM3.

    Args:
        model: a ``Sam3Model``, possibly PEFT-wrapped (and prepared by Accelerate).
        tokenizer: the processor's tokenizer.
        loss: the set-prediction loss.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: object, loss: Sam3ConceptLoss) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.criterion = loss

    def forward(self, batch: ConceptBatch) -> ConceptOutputs:
        """Run SAM3 on every (image, prompt) pair of ``batch`` and collect all decoder layers."""
        sam3 = base_sam3(self.model)
        device = batch.pixel_values.device
        vision = self.model.get_vision_features(pixel_values=batch.pixel_values)
        per_prompt_vision = select_images(vision, batch.prompt_image_index)
        text_features, text_mask, text_index = encode_prompts(
            self.model, self.tokenizer, batch.prompts, device
        )
        with capture_decoder_layers(sam3) as layers:
            outputs = self.model(
                vision_embeds=per_prompt_vision,
                text_embeds=BaseModelOutputWithPooling(pooler_output=text_features[text_index]),
                attention_mask=text_mask[text_index],
            )
        decoder = layers.decoder
        boxes = (inverse_sigmoid(decoder.reference_boxes) + layers.box_offsets).sigmoid()
        return ConceptOutputs(
            logits=layers.logits.squeeze(-1),
            boxes=boxes,
            presence_logits=decoder.presence_logits,
            masks=outputs.pred_masks,
            semantic_logits=outputs.semantic_seg,
        )

    def compute_loss(
        self, batch: ConceptBatch, num_boxes: float | None = None
    ) -> dict[str, Tensor]:
        """Forward + loss: ``{"loss": total, <term>: weighted term, ...}``."""
        outputs = self.forward(batch)
        return self.loss(outputs, batch, num_boxes)

    def loss(
        self, outputs: ConceptOutputs, batch: ConceptBatch, num_boxes: float | None = None
    ) -> dict[str, Tensor]:
        targets = [
            PromptTarget(boxes=b, masks=m)
            for b, m in zip(batch.target_boxes, batch.target_masks, strict=True)
        ]
        return self.criterion(outputs, targets, num_boxes)

    def summarize_validation(self, steps: list[dict[str, Tensor]]) -> dict[str, float]:
        return summarize_validation(steps)

    def save_weights(self, folder: Path) -> None:
        """Write what is trained into ``folder``: the adapter (PEFT format) for a LoRA model,
        the whole model (``save_pretrained``) when every weight is trained."""
        model = _unwrap(self.model)
        if isinstance(model, PeftModel):
            save_lora_weights(model, folder)
        else:
            model.save_pretrained(folder, safe_serialization=True)

    def load_weights(self, folder: Path) -> None:
        """Load what :meth:`save_weights` wrote, strictly (missing / unexpected keys fail)."""
        model = _unwrap(self.model)
        try:
            if isinstance(model, PeftModel):
                load_adapter_weights_strict(model, folder)
            else:
                load_model_weights_strict(model, Path(folder) / "model.safetensors")
        except AdapterError as error:
            raise CheckpointError(str(error)) from None

    @torch.no_grad()
    def validation_step(
        self, batch: ConceptBatch, score_threshold: float = 0.5, mask_threshold: float = 0.5
    ) -> dict[str, Tensor]:
        """Loss terms and per-prompt statistics for validation.

        Returns per-prompt tensors: ``iou`` / ``dice`` of the union of predicted masks (queries
        with score >= ``score_threshold``) against the union of target masks, ``top1_iou`` (the
        best instance IoU of the highest-scoring query's mask: threshold-free), ``has_target``,
        ``fires`` (any query above threshold), ``presence_correct``; and the loss terms.
        """
        outputs = self.forward(batch)
        losses = self.loss(outputs, batch)
        scores = outputs.logits[-1].sigmoid() * outputs.presence_logits[-1].sigmoid()
        keep = scores >= score_threshold  # [B, Q]
        size = batch.pixel_values.shape[-2:]
        # Upsample only the kept queries' masks: all Q at 1008 px would not fit in memory.
        predicted = torch.zeros((len(keep), *size), dtype=torch.bool, device=keep.device)
        for prompt, kept in enumerate(keep):
            if kept.any():
                masks = _binary_masks(outputs.masks[prompt, kept], size, mask_threshold)
                predicted[prompt] = masks.any(dim=0)
        target = torch.stack(
            [
                m.any(dim=0) if len(m) else torch.zeros(size, dtype=torch.bool, device=m.device)
                for m in batch.target_masks
            ]
        )
        intersection = (predicted & target).flatten(1).sum(1).float()
        union = (predicted | target).flatten(1).sum(1).float()
        areas = predicted.flatten(1).sum(1).float() + target.flatten(1).sum(1).float()
        has_target = torch.tensor([len(b) > 0 for b in batch.target_boxes], device=keep.device)
        presence = outputs.presence_logits[-1].squeeze(-1) > 0
        # Threshold-free: does the highest-scoring query segment one of the prompt's instances?
        top1_iou = torch.zeros(len(keep), device=keep.device)
        for prompt, instances in enumerate(batch.target_masks):
            if len(instances):
                best = outputs.masks[prompt, scores[prompt].argmax()][None]
                mask = _binary_masks(best, size, mask_threshold)[0]
                overlap = (instances & mask).flatten(1).sum(1).float()
                joint = (instances | mask).flatten(1).sum(1).float().clamp(min=1)
                top1_iou[prompt] = (overlap / joint).max()
        return {
            "top1_iou": top1_iou,
            "iou": torch.where(union > 0, intersection / union.clamp(min=1), 1.0),
            "dice": torch.where(areas > 0, 2 * intersection / areas.clamp(min=1), 1.0),
            "has_target": has_target,
            "fires": keep.any(dim=1),
            "presence_correct": presence == has_target,
            **{f"loss/{k}": v.detach().reshape(1) for k, v in losses.items()},
        }


def _binary_masks(logits: Tensor, size: torch.Size, threshold: float) -> Tensor:
    """Mask logits [K, h, w] bilinearly upsampled to ``size`` and thresholded: bool [K, H, W]."""
    upsampled = torch.nn.functional.interpolate(
        logits.float()[None], size=size, mode="bilinear", align_corners=False
    )[0]
    return upsampled.sigmoid() >= threshold


def summarize_validation(steps: list[dict[str, Tensor]]) -> dict[str, float]:
    """Aggregate :meth:`ConceptTask.validation_step` results into ``val/*`` metrics.

    ``miou`` / ``dice`` / ``recall_prompts`` / ``top1_iou`` average the prompts with targets,
    ``fp_prompt_rate`` the prompts without; ``giou`` averages all prompts (a no-target prompt
    scores 1 when nothing passes the threshold, else 0), so it weighs found masks against false
    alarms in one number, as generalized referring segmentation (gRefCOCO) does.
    """
    if not steps:
        return {}
    merged = {key: torch.cat([s[key].reshape(-1).float().cpu() for s in steps]) for key in steps[0]}
    has_target = merged["has_target"].bool()
    metrics = {
        k.replace("loss/", "val/loss_").replace("val/loss_loss", "val/loss"): v.mean().item()
        for k, v in merged.items()
        if k.startswith("loss/")
    }
    if has_target.any():
        metrics["val/miou"] = merged["iou"][has_target].mean().item()
        metrics["val/dice"] = merged["dice"][has_target].mean().item()
        metrics["val/recall_prompts"] = merged["fires"][has_target].mean().item()
        metrics["val/top1_iou"] = merged["top1_iou"][has_target].mean().item()
    if (~has_target).any():
        metrics["val/fp_prompt_rate"] = merged["fires"][~has_target].mean().item()
    metrics["val/giou"] = merged["iou"].mean().item()
    metrics["val/presence_accuracy"] = merged["presence_correct"].mean().item()
    metrics["val/prompts"] = float(len(has_target))
    return metrics
