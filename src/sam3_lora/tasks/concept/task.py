"""The concept task as the trainer sees it: module, collate, loss, validation, weight I/O."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from torch import Tensor

from sam3_lora.engine.optim import NamedParameters, decay_groups
from sam3_lora.tasks.concept.loss import ConceptOutputs, PromptTarget, Sam3ConceptLoss
from sam3_lora.tasks.concept.module import ConceptModel, select_prompts
from sam3_lora.tasks.concept.samples import (
    RETENTION_PROMPT_ID,
    ConceptBatch,
    ConceptSample,
    collate_concept_samples,
)
from sam3_lora.tasks.concept.validation import (
    RETENTION_KEYS,
    prompt_statistics,
    retention_statistics,
    summarize_validation,
)
from sam3_lora.tasks.weights import load_trained_weights, save_trained_weights


class ConceptTask:
    """Text-prompted SAM3 for the engine.

    Args:
        model: the :class:`ConceptModel` (the module the trainer prepares and wraps).
        loss: the set-prediction loss.
        score_threshold / mask_threshold: of the thresholded validation metrics.
        groups: ``named parameters -> AdamW param groups`` (see ``tasks/concept/finetune.py``);
            default: the two LoRA groups at learning rate 1e-4, weight decay 0.01.
        processor: saved beside the weights of a fully trained model, so that ``final/`` is a
            complete model folder.
    """

    def __init__(
        self,
        model: ConceptModel,
        loss: Sam3ConceptLoss,
        score_threshold: float = 0.5,
        mask_threshold: float = 0.5,
        groups: Callable[[NamedParameters], list[dict]] | None = None,
        processor: Any | None = None,
    ) -> None:
        self.model = model
        self.criterion = loss
        self.score_threshold = score_threshold
        self.mask_threshold = mask_threshold
        self.groups = groups or partial(decay_groups, learning_rate=1e-4, weight_decay=0.01)
        self.processor = processor

    def collate(self, samples: list[ConceptSample]) -> ConceptBatch:
        return collate_concept_samples(samples)

    def loss(
        self, outputs: ConceptOutputs, batch: ConceptBatch, num_targets: float | None = None
    ) -> dict[str, Tensor]:
        """``{"loss": total, <term>: weighted term, ...}``; ``num_targets`` is the box
        normaliser N (default: this batch's boxes; the trainer passes the mean over processes)."""
        targets = [
            PromptTarget(boxes=b, masks=m)
            for b, m in zip(batch.target_boxes, batch.target_masks, strict=True)
        ]
        return self.criterion(outputs, targets, num_targets)

    def validation_statistics(
        self, outputs: ConceptOutputs, batch: ConceptBatch
    ) -> dict[str, Tensor]:
        """Per-prompt statistics (see :func:`prompt_statistics`), the loss terms of each
        image on its own (so the validation loss depends neither on the batch size nor on the
        number of processes) and, for the retention prompts, the base model's answers against
        the adapter's (:meth:`retention`); retention prompts count in nothing else."""
        retained = [r for r, c in enumerate(batch.prompt_category_ids) if c == RETENTION_PROMPT_ID]
        retention = self.retention(outputs, batch, retained)
        if retained:
            rows = [r for r, c in enumerate(batch.prompt_category_ids) if c != RETENTION_PROMPT_ID]
            outputs = select_prompts(outputs, torch.tensor(rows, device=outputs.logits.device))
            batch = batch.select_prompts(rows)
        statistics = prompt_statistics(outputs, batch, self.score_threshold, self.mask_threshold)
        per_image = []
        for image in range(batch.num_images):
            rows = (batch.prompt_image_index == image).nonzero().flatten()
            targets = [
                PromptTarget(boxes=batch.target_boxes[r], masks=batch.target_masks[r])
                for r in rows.tolist()
            ]
            per_image.append(self.criterion(select_prompts(outputs, rows), targets))
        statistics.update(
            {f"loss/{k}": torch.stack([p[k].detach() for p in per_image]) for k in per_image[0]}
        )
        statistics.update(retention)
        return statistics

    @torch.no_grad()
    def retention(
        self, outputs: ConceptOutputs, batch: ConceptBatch, rows: list[int]
    ) -> dict[str, Tensor]:
        """Retention statistics of the prompts ``rows`` (:func:`retention_statistics`): the
        adapter's outputs against the base model's, run here with the adapter disabled. Empty
        without such prompts or without an adapter to disable."""
        if not rows or not isinstance(self.network, PeftModel):
            return {key: torch.zeros(0) for key in RETENTION_KEYS}
        subset = batch.select_prompts(rows)
        with self.network.disable_adapter():
            base = self.model(subset)
        adapted = select_prompts(outputs, torch.tensor(rows, device=outputs.logits.device))
        size = batch.pixel_values.shape[-2:]
        return retention_statistics(base, adapted, size, self.score_threshold, self.mask_threshold)

    def summarize_validation(self, steps: list[dict[str, Tensor]]) -> dict[str, float]:
        return summarize_validation(steps)

    def summary_notes(self) -> dict[str, str]:
        """Lines for the end-of-run summary: the vision-feature cache, when there is one."""
        cache = self.model.feature_cache
        if cache is None:
            return {}
        return {
            "vision feature cache": f"{cache.storage}, {cache.nbytes() / 2**20:.0f} MiB, "
            f"{cache.hits} hits, {cache.misses} misses"
            + (f", {cache.not_stored} not stored" if cache.not_stored else "")
        }

    @property
    def find_unused_parameters(self) -> bool:
        """Whether a batch may leave trainable weights without gradients (full fine-tuning:
        the box-exemplar encoder on text-only prompts, for one); DDP must then look for them."""
        return not isinstance(self.network, PeftModel)

    @property
    def network(self) -> torch.nn.Module:
        """The PEFT model (LoRA) or the plain ``Sam3Model`` (full fine-tuning)."""
        return self.model.network

    def parameter_groups(self) -> list[dict]:
        """AdamW param groups of the trainable parameters (``name``, ``params``, ``lr``,
        ``weight_decay``): per component and ViT layer in full mode, decay / no decay in LoRA."""
        return self.groups(self.network.named_parameters())

    def save_weights(self, folder: Path, state_dict: dict[str, Tensor] | None = None) -> None:
        """Write what is trained into ``folder``: the adapter (PEFT format) for a LoRA model,
        the whole model (``save_pretrained``, safetensors) and its processor when every weight
        is trained (a folder ``Sam3Model.from_pretrained`` and ``sam3-lora predict`` load).

        Args:
            state_dict: under FSDP: the gathered state dict of :attr:`model`
                (``accelerator.get_state_dict(model)``, collected on every rank) to write
                instead of the sharded parameters.
        """
        save_trained_weights(self.network, self.processor, folder, state_dict)

    def load_weights(self, folder: Path) -> None:
        """Load what :meth:`save_weights` wrote, strictly (missing / unexpected keys fail)."""
        load_trained_weights(self.network, folder)
