"""SAM3's concept forward: one ``nn.Module`` whose ``forward(batch)`` is the whole model call.

Training, validation, evaluation and prediction all run :class:`ConceptModel`, and the trainer
prepares (and DDP / FSDP wrap) this module, so every trainable parameter is used inside one
``forward``.

Compute sharing: each image's vision features are computed once per call and indexed for all of
its prompts (``Sam3Model(vision_embeds=...)``); each distinct prompt text is encoded once per call
(``text_embeds=``). Prompts with box exemplars run in a second detector pass on the same vision
features (box padding would change the text-only prompts' outputs).

Deviations from Meta's training, forced by ``transformers``' ``Sam3Model`` (see
``docs/training.md``):

- ``Sam3Model.forward`` returns only the final decoder layer (boxes in xyxy). The per-layer logits,
  boxes and presence logits for the auxiliary losses are captured with forward hooks on its own
  submodules (``detr_decoder``, ``detr_decoder.box_head``, ``dot_product_scoring``): the model is
  run once, as is, and nothing of it is re-implemented.
- Meta also trains a one-to-many head (200 extra queries); ``Sam3Model`` has none.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers import Sam3Model
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput, inverse_sigmoid

from sam3_lora.tasks.concept.feature_cache import VisionFeatureCache
from sam3_lora.tasks.concept.loss import ConceptOutputs
from sam3_lora.tasks.concept.samples import BOX_PADDING_LABEL, ConceptBatch
from sam3_lora.tasks.spec import unwrap_model

TEXT_LENGTH = 32


def encode_prompts(
    network: torch.nn.Module, tokenizer: object, prompts: list[str], device: torch.device
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
    features = network.get_text_features(
        input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
    ).pooler_output
    position = {text: i for i, text in enumerate(unique)}
    index = torch.tensor([position[p] for p in prompts], device=device, dtype=torch.long)
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


class ConceptModel(torch.nn.Module):
    """SAM3 on a batch of (image, prompt) pairs, every decoder layer returned.

    Args:
        network: a ``Sam3Model``, possibly wrapped by PEFT.
        tokenizer: the processor's tokenizer (texts are tokenized inside ``forward``).
        feature_cache: vision features kept across epochs (frozen vision encoder, fixed
            transform); used in training mode only (validation images have other indices).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        tokenizer: object,
        feature_cache: VisionFeatureCache | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.tokenizer = tokenizer
        self.feature_cache = feature_cache

    @property
    def sam3(self) -> Sam3Model:
        """The ``Sam3Model`` inside the PEFT wrapper."""
        return unwrap_model(self.network)

    def forward(self, batch: ConceptBatch) -> ConceptOutputs:
        """Run every (image, prompt) pair of ``batch``.

        Returns:
            :class:`ConceptOutputs`: logits / boxes (cxcywh) / presence of every decoder layer
            ``[L, B, ...]``, final-layer masks ``[B, Q, h, w]`` and semantic logits.
        """
        device = batch.pixel_values.device
        if self.feature_cache is not None and self.training:
            vision = self.feature_cache.features(
                batch.image_indices,
                batch.pixel_values,
                lambda pixels: self.network.get_vision_features(pixel_values=pixels),
            )
        else:
            vision = self.network.get_vision_features(pixel_values=batch.pixel_values)
        text_features, text_mask, text_index = encode_prompts(
            self.network, self.tokenizer, batch.prompts, device
        )
        has_boxes = batch.prompt_has_boxes()
        if not has_boxes.any():
            return self._detect(vision, batch, text_features, text_mask, text_index, None)
        parts = []
        for selected in (~has_boxes, has_boxes):
            rows = selected.nonzero().flatten()
            if len(rows):
                part = self._detect(vision, batch, text_features, text_mask, text_index, rows)
                parts.append((rows, part))
        return merge_outputs(parts, batch.num_prompts)

    def _detect(
        self,
        vision: Sam3VisionEncoderOutput,
        batch: ConceptBatch,
        text_features: Tensor,
        text_mask: Tensor,
        text_index: Tensor,
        rows: Tensor | None,
    ) -> ConceptOutputs:
        """One detector pass over the prompts ``rows`` (all when None)."""
        image_index, text_rows = batch.prompt_image_index, text_index
        inputs: dict[str, Tensor] = {}
        if rows is not None:
            image_index, text_rows = image_index[rows.to(image_index.device)], text_index[rows]
            if batch.input_boxes is not None:
                labels = batch.input_boxes_labels[rows]
                if (labels != BOX_PADDING_LABEL).any():
                    keep = int((labels != BOX_PADDING_LABEL).sum(1).max())
                    inputs = {
                        "input_boxes": batch.input_boxes[rows][:, :keep],
                        "input_boxes_labels": labels[:, :keep],
                    }
        with capture_decoder_layers(self.sam3) as layers:
            outputs = self.network(
                vision_embeds=select_images(vision, image_index),
                text_embeds=BaseModelOutputWithPooling(pooler_output=text_features[text_rows]),
                attention_mask=text_mask[text_rows],
                **inputs,
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


def select_prompts(outputs: ConceptOutputs, rows: Tensor) -> ConceptOutputs:
    """The outputs of the prompts ``rows`` only."""

    def take(value: Tensor | None, prompt_dim: int) -> Tensor | None:
        return None if value is None else value.index_select(prompt_dim, rows.to(value.device))

    return ConceptOutputs(
        logits=take(outputs.logits, 1),
        boxes=take(outputs.boxes, 1),
        presence_logits=take(outputs.presence_logits, 1),
        masks=take(outputs.masks, 0),
        semantic_logits=take(outputs.semantic_logits, 0),
    )


def merge_outputs(parts: list[tuple[Tensor, ConceptOutputs]], total: int) -> ConceptOutputs:
    """Outputs of several detector passes put back in prompt order (``total`` prompts)."""

    def scatter(name: str, prompt_dim: int) -> Tensor | None:
        pieces = [(rows, getattr(part, name)) for rows, part in parts]
        if any(piece is None for _, piece in pieces):
            return None
        first = pieces[0][1]
        shape = list(first.shape)
        shape[prompt_dim] = total
        merged = first.new_zeros(shape)
        for rows, piece in pieces:
            merged.index_copy_(prompt_dim, rows.to(piece.device), piece)
        return merged

    return ConceptOutputs(
        logits=scatter("logits", 1),
        boxes=scatter("boxes", 1),
        presence_logits=scatter("presence_logits", 1),
        masks=scatter("masks", 0),
        semantic_logits=scatter("semantic_logits", 0),
    )
