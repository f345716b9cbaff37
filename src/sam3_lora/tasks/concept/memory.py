"""What one concept training step of SAM3 keeps for the backward pass (``lora-info --memory``).

:class:`ConceptMemoryProbe` runs the task's own pieces under fake tensors at the real size:
the vision features once per image, each prompt text encoded once, one detector pass over all
(image, prompt) pairs (``ConceptModel._detect``, the text-only path of its ``forward``). The
loss needs values (the Hungarian matcher), so it runs on real zero tensors of the outputs'
shapes, with :data:`OBJECTS_PER_PROMPT` targets per prompt; its saved tensors are counted the
same way. The vision encoder runs once for one image (its count scales with the images); the
rest runs on stand-in features of the batch's images. With checkpointing, the inputs of the
checkpointed layers are counted too (the checkpoint keeps them). Frozen linear / conv weights
are stored as training stores them (:mod:`sam3_lora.frozen_weights`): in the probed autocast
dtype in LoRA mode, fp32 otherwise.
"""

from __future__ import annotations

import copy
from contextlib import AbstractContextManager

import torch
from torch import Tensor
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

from sam3_lora.config import Config
from sam3_lora.errors import ConfigError
from sam3_lora.frozen_weights import cast_frozen_weights, casts_frozen_weights
from sam3_lora.memory.probe import (
    Count,
    FakeSession,
    Precision,
    SavedTensors,
    counted_checkpointing,
    leaf_like,
    make_fake,
    storage_key,
)
from sam3_lora.tasks.concept.checkpointing import (
    CHECKPOINTED_LAYERS,
    enable_activation_checkpointing,
)
from sam3_lora.tasks.concept.loss import ConceptOutputs, PromptTarget
from sam3_lora.tasks.concept.module import TEXT_LENGTH
from sam3_lora.tasks.concept.samples import ConceptBatch
from sam3_lora.tasks.spec import unwrap_model

#: Ground-truth objects per prompt assumed in the loss (the matched masks it upsamples).
OBJECTS_PER_PROMPT = 2


def at_resolution(model: torch.nn.Module, resolution: int | None) -> torch.nn.Module:
    """``model`` (a ``Sam3Model``), rebuilt on the meta device for another input size."""
    vision = model.config.vision_config
    if resolution is None or resolution == vision.image_size:
        return model
    backbone = vision.backbone_config
    patch = backbone.patch_size
    window = getattr(backbone, "window_size", 1) or 1
    if resolution % (patch * window):
        raise ConfigError(
            f"resolution {resolution}: this SAM3 needs a multiple of {patch * window} "
            f"({patch} px patches in {window}-token windows)"
        )
    config = copy.deepcopy(model.config)
    tokens = resolution // patch
    config.vision_config.image_size = resolution
    config.vision_config.backbone_config.image_size = resolution
    scales = [size[0] / (vision.image_size // patch) for size in vision.backbone_feature_sizes]
    config.vision_config.backbone_feature_sizes = [[round(tokens * s)] * 2 for s in scales]
    with torch.device("meta"):
        return type(model)(config)


class ConceptMemoryProbe:
    """Counts the concept task's training step for ``config`` on ``model`` (meta or CPU).

    Args:
        config: the run's config (LoRA / full mode, loss settings).
        model: the base ``Sam3Model``; it is rebuilt at ``resolution`` when that differs.
        resolution: input size; None = the model's.
    """

    checkpointing_supported = True

    def __init__(self, config: Config, model: torch.nn.Module, resolution: int | None) -> None:
        from sam3_lora.models import LoadedModel
        from sam3_lora.tasks.concept.recipe import build_concept_task
        from sam3_lora.tasks.concept.spec import SPEC

        model = at_resolution(model, resolution or config.data.resolution)
        self.frozen_in_compute_dtype = casts_frozen_weights(config)
        config = config.model_copy(deep=True)
        config.training.gradient_checkpointing = False
        config.training.cache_vision_features = False
        task = build_concept_task(config, LoadedModel(model, None, "memory", SPEC))
        self.module = task.model
        self.criterion = task.criterion
        self.network = task.model.network
        self.resolution = int(unwrap_model(self.network).config.vision_config.image_size)
        self.session = FakeSession()
        make_fake(self.module, self.session.mode)
        self.checkpointed_layers = sum(
            isinstance(m, CHECKPOINTED_LAYERS) for m in self.network.modules()
        )
        self._vision_counts: dict[tuple, tuple[Count, tuple]] = {}

    def run(
        self, images: int, prompts_per_image: int, precision: Precision, checkpointing: bool
    ) -> Count:
        """Count the forward + loss of ``images`` x ``prompts_per_image`` text prompts: the
        vision encoder's part is one image's times ``images`` (it runs per image)."""
        vision_count, template = self._vision(precision, checkpointing)
        self._store_frozen_weights(precision)
        counter = SavedTensors(self.module.parameters(), precision)
        with self._checkpointing(checkpointing, counter), counter:
            with self.session.active():
                vision = Sam3VisionEncoderOutput(
                    fpn_hidden_states=tuple(leaf_like(f, images) for f in template[0]),
                    fpn_position_encoding=tuple(leaf_like(p, images) for p in template[1]),
                )
                counter.parameter_keys.update(map(storage_key, vision.fpn_hidden_states))
                outputs = self._detect(vision, images, prompts_per_image)
            counter.keep(*_tensors(outputs))
            self._loss(outputs, counter)
        return vision_count.per_images(images) + counter.count()

    def _vision(self, precision: Precision, checkpointing: bool) -> tuple[Count, tuple]:
        """One image through the vision encoder: its count and its output features."""
        key = (precision, checkpointing)
        if key not in self._vision_counts:
            self.module.train()
            self._store_frozen_weights(precision)
            counter = SavedTensors(self.module.parameters(), precision)
            size = self.resolution
            with self._checkpointing(checkpointing, counter), counter:
                with self.session.active():
                    pixels = torch.zeros(1, 3, size, size)
                    vision = self.network.get_vision_features(pixel_values=pixels)
                counter.keep(*vision.fpn_hidden_states)
            template = (vision.fpn_hidden_states, vision.fpn_position_encoding)
            self._vision_counts[key] = (counter.count(), template)
        return self._vision_counts[key]

    def feature_cache_bytes_per_image(self, precision: Precision) -> int:
        """What ``training.cache_vision_features`` keeps per training image (its FPN levels as
        the vision encoder returns them at ``precision``), in host memory or on disk."""
        levels = self._vision(precision, False)[1][0]
        return sum(level[0].numel() * level.element_size() for level in levels)

    def _store_frozen_weights(self, precision: Precision) -> None:
        """Frozen linear / conv weights in the dtype training stores them in at ``precision``."""
        dtype = precision.dtype if self.frozen_in_compute_dtype else None
        with self.session.active():
            cast_frozen_weights(self.network, dtype or torch.float32)

    def _checkpointing(self, on: bool, counter: SavedTensors) -> AbstractContextManager[None]:
        return counted_checkpointing(
            self.network, CHECKPOINTED_LAYERS, enable_activation_checkpointing, on, counter
        )

    def _detect(
        self, vision: Sam3VisionEncoderOutput, images: int, prompts_per_image: int
    ) -> ConceptOutputs:
        """The text encoder and one detector pass, as ``ConceptModel.forward`` runs them for
        text prompts (each distinct text encoded once)."""
        size, prompts = self.resolution, images * prompts_per_image
        batch = ConceptBatch(
            pixel_values=torch.zeros(images, 3, size, size),
            prompt_image_index=torch.arange(images).repeat_interleave(prompts_per_image),
            prompts=[f"concept {k}" for _ in range(images) for k in range(prompts_per_image)],
            prompt_category_ids=[0] * prompts,
            target_boxes=[],
            target_masks=[],
            image_indices=list(range(images)),
        )
        tokens = torch.zeros(prompts_per_image, TEXT_LENGTH, dtype=torch.long)
        mask = torch.ones(prompts_per_image, TEXT_LENGTH, dtype=torch.long)
        text = self.network.get_text_features(input_ids=tokens, attention_mask=mask)
        text_index = torch.arange(prompts_per_image).repeat(images)
        return self.module._detect(vision, batch, text.pooler_output, mask, text_index, None)

    def _loss(self, outputs: ConceptOutputs, counter: SavedTensors) -> None:
        """The loss on real tensors shaped as ``outputs``; the stand-ins are not counted."""
        stand_ins = {
            name: None if value is None else torch.zeros(value.shape, dtype=value.dtype)
            for name, value in vars(outputs).items()
        }
        for value in stand_ins.values():
            if value is not None:
                value.requires_grad_(True)
                counter.parameter_keys.add(value.untyped_storage()._cdata)
        real = ConceptOutputs(**stand_ins)
        prompts, size = real.logits.shape[1], self.resolution
        boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]])[:OBJECTS_PER_PROMPT]
        masks = torch.zeros(OBJECTS_PER_PROMPT, size, size, dtype=torch.bool)
        masks[:, size // 4 : size // 2, size // 4 : size // 2] = True
        targets = [PromptTarget(boxes=boxes, masks=masks) for _ in range(prompts)]
        self.criterion(real, targets)


def _tensors(outputs: ConceptOutputs) -> list[Tensor]:
    return [v for v in vars(outputs).values() if isinstance(v, Tensor)]
