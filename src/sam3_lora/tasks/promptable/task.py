"""The promptable task as the trainer sees it: module, collate, loss, validation, weight I/O."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from torch import Tensor

from sam3_lora.errors import CheckpointError
from sam3_lora.lora import merged_state_dict
from sam3_lora.tasks.promptable.loss import TERMS, PromptableLoss
from sam3_lora.tasks.promptable.module import PromptableModel, PromptableOutputs
from sam3_lora.tasks.promptable.samples import PromptBatch, PromptSample, collate_prompt_samples
from sam3_lora.tasks.promptable.validation import outputs_statistics, summarize
from sam3_lora.tasks.weights import load_trained_weights, save_trained_weights

logger = logging.getLogger(__name__)

#: Validation prompts besides the module's own (``box``): each adds ``val/<prompt>_miou`` and
#: ``val/<prompt>_dice``.
EXTRA_VALIDATION_PROMPTS = ("point",)


class PromptableTask:
    """SAM2 / SAM3-tracker box and click prompting for the engine.

    Validation runs every object twice with the deterministic evaluation prompts: its box
    (``val/miou``, ``val/dice``, the loss terms) and one click at its centre-most pixel
    (``val/point_miou``, ``val/point_dice``).

    Args:
        model: the :class:`PromptableModel` (the module the trainer prepares and wraps).
        loss: Meta's multi-step, multi-mask loss.
        mask_threshold: mask probability threshold of the validation IoU / Dice.
        extra_prompts: validation prompts after the box one.
        groups: ``named parameters -> AdamW groups`` (:mod:`sam3_lora.tasks.promptable.finetune`);
            None: the trainer's two LoRA groups.
        processor: the model's processor, saved beside whole-model weights (full mode, the
            merged best model) so that the folders load for prediction as they are.
    """

    def __init__(
        self,
        model: PromptableModel,
        loss: PromptableLoss,
        mask_threshold: float = 0.5,
        extra_prompts: Sequence[str] = EXTRA_VALIDATION_PROMPTS,
        groups: Callable[[Any], list[dict]] | None = None,
        processor: Any | None = None,
    ) -> None:
        self.model = model
        self.groups = groups
        self.processor = processor
        self.criterion = loss
        self.mask_threshold = mask_threshold
        self.extra_prompts = tuple(extra_prompts)

    def collate(self, samples: list[PromptSample]) -> PromptBatch:
        return collate_prompt_samples(samples)

    def loss(
        self, outputs: PromptableOutputs, batch: PromptBatch, num_targets: float | None = None
    ) -> dict[str, Tensor]:
        """``{"loss": total, <term>: weighted term, ...}``; ``num_targets`` is the object
        normaliser (default: this batch's objects; the trainer passes the mean over processes).

        A batch without objects (they all vanished at the model resolution) gets a zero loss
        that still reaches every trainable parameter, so that each process has a graph to
        backward and distributed gradient averaging does not wait for it.
        """
        if not outputs.steps:
            zero = sum(
                (p.sum() * 0.0 for p in self.model.parameters() if p.requires_grad),
                torch.zeros((), device=batch.pixel_values.device),
            )
            return {"loss": zero, **{term: zero.detach() for term in TERMS}}
        return self.criterion(outputs.steps, batch.target_masks, num_targets)

    def validation_statistics(
        self, outputs: PromptableOutputs, batch: PromptBatch
    ) -> dict[str, Tensor]:
        """Per-object IoU / Dice with box prompts (``outputs``, the module's eval forward) and
        with each extra prompt (run here), and the loss terms of the box prompts."""
        record = outputs_statistics(outputs, batch, self.criterion, self.mask_threshold)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for prompt in self.extra_prompts:
                    extra = self.model(batch, prompt=prompt, correction_clicks=0)
                    record.update(
                        outputs_statistics(
                            extra, batch, self.criterion, self.mask_threshold, f"{prompt}_"
                        )
                    )
        finally:
            self.model.train(was_training)
        return record

    def summarize_validation(self, steps: list[dict[str, Tensor]]) -> dict[str, float]:
        return summarize(steps)

    @property
    def network(self) -> torch.nn.Module:
        """The PEFT model (LoRA) or the plain ``Sam2Model`` / ``Sam3TrackerModel``."""
        return self.model.network

    @property
    def find_unused_parameters(self) -> bool:
        """Full fine-tuning may train weights a batch leaves without gradient (the prompt
        encoder's mask embedding without mask input, SAM3's dropped neck level): DDP must look
        for them. LoRA adapters are all reached."""
        return not isinstance(self.network, PeftModel)

    def parameter_groups(self) -> list[dict] | None:
        """AdamW param groups of the trainable parameters (``name``, ``params``, ``lr``,
        ``weight_decay``): per component and trunk layer in full mode, decay / no decay in LoRA;
        None without a group builder (the trainer then builds its two LoRA groups)."""
        if self.groups is None:
            return None
        return self.groups(self.network.named_parameters())

    def save_weights(self, folder: Path, state_dict: dict[str, Tensor] | None = None) -> None:
        """Write what is trained into ``folder``: the adapter (PEFT format) for a LoRA model,
        the whole model (``save_pretrained``, safetensors) and its processor when every weight
        is trained (a folder ``Sam2Model.from_pretrained`` loads).

        Args:
            state_dict: under FSDP: the gathered state dict of :attr:`model`, written instead
                of the sharded parameters.
        """
        save_trained_weights(self.network, self.processor, folder, state_dict)

    @property
    def can_merge(self) -> bool:
        """Whether :meth:`save_merged_weights` can fold the adapter in: not on a 4-bit base
        (QLoRA), whose merge belongs on the float base (``sam3-lora merge`` of the best adapter);
        the trainer then writes the adapter alone."""
        from sam3_lora.quantization import is_4bit

        if is_4bit(self.network):
            if not getattr(self, "_merge_note_logged", False):
                logger.info(
                    "4-bit base (QLoRA): no best_merged folder; merge the best adapter onto the "
                    "float base with `sam3-lora merge`"
                )
                self._merge_note_logged = True
            return False
        return True

    def save_merged_weights(self, folder: Path) -> None:
        """Write the model with the adapter folded in (a plain ``Sam2Model`` /
        ``Sam3TrackerModel`` folder, safetensors, and the processor), the training model left
        as it is. LoRA only: in full mode :meth:`save_weights` already writes the model."""
        if not isinstance(self.network, PeftModel):
            raise CheckpointError("save_merged_weights: the model carries no LoRA adapter")
        base = self.network.get_base_model()
        base.save_pretrained(
            folder, state_dict=merged_state_dict(self.network), safe_serialization=True
        )
        if self.processor is not None:
            self.processor.save_pretrained(folder)

    def load_weights(self, folder: Path) -> None:
        """Load what :meth:`save_weights` wrote, strictly (missing / unexpected keys fail)."""
        load_trained_weights(self.network, folder)
