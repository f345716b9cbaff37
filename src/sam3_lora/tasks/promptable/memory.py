"""What one promptable training step (SAM2 / SAM3 tracker) keeps for the backward pass.

:class:`PromptableMemoryProbe` runs the task's own module under fake tensors at the real size:
the image embeddings once per image (``PromptableModel.image_embeddings``), then
``1 + loss.correction_rounds`` prediction steps per object through ``PromptableModel.decode``,
each step's best mask fed back (not detached, as training does), and the loss over all steps.
Prompt values do not change memory, so the probe prompts what training could prompt at most:
one click first (three masks, Meta's multimask rule), one more click per step. With
``training.gradient_checkpointing`` the image-encoder and two-way attention blocks are
checkpointed as training checkpoints them, and their inputs counted (the checkpoint keeps
them). The image encoder runs once for one image (its count scales with the images). Frozen
linear / conv weights are stored as training stores them (:mod:`sam3_lora.frozen_weights`): in
the probed autocast dtype in LoRA mode, fp32 otherwise.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch
from torch import Tensor

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
from sam3_lora.tasks.promptable.checkpointing import (
    CHECKPOINTED_LAYERS,
    enable_activation_checkpointing,
)
from sam3_lora.tasks.promptable.prompts import PointPrompts


class PromptableMemoryProbe:
    """Counts the promptable task's training step for ``config`` on ``model`` (meta or CPU).

    Args:
        config: the run's config (LoRA settings, ``loss.correction_rounds``).
        model: the base ``Sam2Model`` / ``Sam3TrackerModel``.
        resolution: must be the model's own (its positional embeddings are fixed) or None.
    """

    checkpointing_supported = True

    def __init__(self, config: Config, model: torch.nn.Module, resolution: int | None) -> None:
        from sam3_lora.tasks.promptable.recipe import build_promptable_task

        size = model.config.vision_config.backbone_config.image_size
        own = int(size[0] if isinstance(size, list | tuple) else size)
        wanted = resolution or config.data.resolution
        if wanted not in (None, own):
            raise ConfigError(
                f"resolution {wanted}: this {type(model).__name__} takes {own} px inputs "
                "(fixed positional embeddings); remove --resolution"
            )
        self.frozen_in_compute_dtype = casts_frozen_weights(config)
        config = config.model_copy(deep=True)
        config.training.gradient_checkpointing = False  # switched per run()
        task = build_promptable_task(config, model_holder(model))
        self.module = task.model
        self.criterion = task.criterion
        self.network = self.module.network
        self.resolution = own
        self.steps = 1 + config.loss.correction_rounds
        self.session = FakeSession()
        make_fake(self.module, self.session.mode)
        self.checkpointed_layers = sum(
            isinstance(m, CHECKPOINTED_LAYERS) for m in self.network.modules()
        )
        self._encoder_counts: dict[tuple, tuple[Count, list[Tensor]]] = {}

    def run(
        self, images: int, prompts_per_image: int, precision: Precision, checkpointing: bool
    ) -> Count:
        """Count the forward + loss of ``images`` x ``prompts_per_image`` objects: the image
        encoder's part is one image's times ``images``."""
        encoder_count, template = self._image_encoder(precision, checkpointing)
        self._store_frozen_weights(precision)
        counter = SavedTensors(self.module.parameters(), precision)
        with self._checkpointing(checkpointing, counter), counter, self.session.active():
            embeddings = [leaf_like(level, images) for level in template]
            counter.parameter_keys.update(map(storage_key, embeddings))
            self._decode_steps(embeddings, images, prompts_per_image, counter)
        return encoder_count.per_images(images) + counter.count()

    def _image_encoder(self, precision: Precision, checkpointing: bool) -> tuple[Count, list]:
        key = (precision, checkpointing)
        if key not in self._encoder_counts:
            self.module.train()
            self._store_frozen_weights(precision)
            counter = SavedTensors(self.module.parameters(), precision)
            size = self.resolution
            with self._checkpointing(checkpointing, counter), counter, self.session.active():
                embeddings = self.module.image_embeddings(torch.zeros(1, 3, size, size))
                counter.keep(*embeddings)
            self._encoder_counts[key] = (counter.count(), embeddings)
        return self._encoder_counts[key]

    def _checkpointing(self, on: bool, counter: SavedTensors) -> AbstractContextManager[None]:
        return counted_checkpointing(
            self.network, CHECKPOINTED_LAYERS, enable_activation_checkpointing, on, counter
        )

    def _store_frozen_weights(self, precision: Precision) -> None:
        """Frozen linear / conv weights in the dtype training stores them in at ``precision``."""
        dtype = precision.dtype if self.frozen_in_compute_dtype else None
        with self.session.active():
            cast_frozen_weights(self.network, dtype or torch.float32)

    def _decode_steps(
        self, embeddings: list[Tensor], images: int, prompts_per_image: int, counter: SavedTensors
    ) -> None:
        """Every prediction step of every object, then the loss over all steps."""
        size, objects = self.resolution, images * prompts_per_image
        image_index = torch.arange(images).repeat_interleave(prompts_per_image)
        prompts = PointPrompts(
            torch.full((objects, 1, 2), size / 2), torch.ones(objects, 1, dtype=torch.int32)
        )
        masks, steps = None, []
        for _ in range(self.steps):
            prediction = self.module.decode(embeddings, image_index, prompts, mask_inputs=masks)
            steps.append([prediction])
            masks = prediction.best_mask_logits()[:, None]
            click = torch.full((objects, 2), size / 3)
            prompts = prompts.append(click, torch.ones(objects, dtype=torch.int32))
            counter.keep(prediction.mask_logits, prediction.iou_scores)
        targets = torch.zeros(objects, size, size, dtype=torch.bool)
        self.criterion(steps, targets)


def model_holder(model: torch.nn.Module) -> object:
    """The ``LoadedModel`` the task builder expects, around a bare model."""
    from sam3_lora.models import LoadedModel
    from sam3_lora.tasks import spec_for_model

    return LoadedModel(model, None, "memory", spec_for_model(model))
