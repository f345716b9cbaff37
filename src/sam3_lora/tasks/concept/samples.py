"""Samples of SAM3's concept task: one image with its text prompts and their targets.

As in Meta's training, every dataset category is a prompt for every image; its targets are all
non-crowd instances of that category, and categories absent from the image are prompts with no
targets. ``max_prompts_per_image`` caps the category prompts (positives first, absent ones
sampled).

**Hard negatives.** A dataset with one category ("scratch") never shows the model a prompt that
should find nothing; fine-tuned that way, SAM3 learns to fire on any prompt. So each image also
gets ``num_negative_prompts`` prompts drawn from a vocabulary of other concepts (the built-in
``resources/negative_prompts.txt`` or a user file, :mod:`sam3_lora.data.vocabulary`), with no
targets. Concepts that share a word with a dataset category, prompt or synonym are never drawn
(:func:`sam3_lora.data.vocabulary.exclude_overlapping`). With ``data.verify_negatives`` each image
draws only among the candidates the base model did not find on it
(:mod:`sam3_lora.tasks.concept.negatives`, :meth:`ConceptDataset.set_negative_candidates`).

**Retention prompts** (validation): concepts outside the dataset that the base model finds on an
image (:meth:`ConceptDataset.set_retention_prompts`), with category id ``RETENTION_PROMPT_ID``
and no targets; the task compares the adapter's answers on them with the base model's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from sam3_lora.data.coco import CocoDataset
from sam3_lora.data.transforms import SampleTransform
from sam3_lora.data.vocabulary import (
    category_texts,
    exclude_overlapping,
    load_negative_vocabulary,
)
from sam3_lora.errors import DatasetError

logger = logging.getLogger(__name__)

#: ``prompt_category_ids`` value of a hard-negative prompt.
NEGATIVE_PROMPT_ID = -1
#: ``prompt_category_ids`` value of a retention prompt (a concept the base model finds).
RETENTION_PROMPT_ID = -2
#: transformers' label of a padding slot in ``input_boxes_labels``.
BOX_PADDING_LABEL = -10


@dataclass
class ConceptSample:
    """One training / validation image with P prompts.

    Attributes:
        image_index: index in the source dataset.
        pixel_values: float32 [3, S, S] normalised image.
        prompts: P prompt texts.
        prompt_category_ids: P category ids (``NEGATIVE_PROMPT_ID`` for hard negatives).
        target_boxes: P tensors [N_p, 4], cxcywh normalised by S.
        target_masks: P bool tensors [N_p, S, S].
    """

    image_index: int
    pixel_values: torch.Tensor
    prompts: list[str]
    prompt_category_ids: list[int]
    target_boxes: list[torch.Tensor]
    target_masks: list[torch.Tensor]


@dataclass
class ConceptBatch:
    """Samples collated for one step: I images, B = sum of their prompts.

    Attributes:
        pixel_values: [I, 3, S, S].
        prompt_image_index: [B] long, the image of each prompt.
        prompts / prompt_category_ids / target_boxes / target_masks: per prompt, flattened
            (prediction leaves the targets empty).
        image_indices: I dataset indices.
        input_boxes: optional box exemplars [B, K, 4], cxcywh normalised by the image size.
        input_boxes_labels: [B, K] long: 1 positive, 0 negative exemplar, -10 padding.
    """

    pixel_values: torch.Tensor
    prompt_image_index: torch.Tensor
    prompts: list[str]
    prompt_category_ids: list[int]
    target_boxes: list[torch.Tensor]
    target_masks: list[torch.Tensor]
    image_indices: list[int]
    input_boxes: torch.Tensor | None = None
    input_boxes_labels: torch.Tensor | None = None

    @property
    def num_prompts(self) -> int:
        return len(self.prompts)

    @property
    def num_images(self) -> int:
        return len(self.image_indices)

    @property
    def num_targets(self) -> int:
        """Target boxes in the batch: the loss normaliser N."""
        return sum(len(boxes) for boxes in self.target_boxes)

    def prompt_has_boxes(self) -> torch.Tensor:
        """bool [B]: which prompts carry box exemplars."""
        if self.input_boxes_labels is None:
            return torch.zeros(self.num_prompts, dtype=torch.bool, device=self.pixel_values.device)
        return (self.input_boxes_labels != BOX_PADDING_LABEL).any(dim=1)

    def select_prompts(self, rows: list[int]) -> ConceptBatch:
        """The batch of the prompts ``rows`` only (and of the images they are on)."""
        images = sorted({int(self.prompt_image_index[r]) for r in rows})
        position = {image: k for k, image in enumerate(images)}
        index = torch.tensor(rows, dtype=torch.long, device=self.prompt_image_index.device)

        def take(value: torch.Tensor | None) -> torch.Tensor | None:
            return None if value is None else value[index.to(value.device)]

        return ConceptBatch(
            pixel_values=self.pixel_values[torch.tensor(images, dtype=torch.long)],
            prompt_image_index=torch.tensor(
                [position[int(self.prompt_image_index[r])] for r in rows],
                dtype=torch.long,
                device=self.prompt_image_index.device,
            ),
            prompts=[self.prompts[r] for r in rows],
            prompt_category_ids=[self.prompt_category_ids[r] for r in rows],
            target_boxes=[self.target_boxes[r] for r in rows] if self.target_boxes else [],
            target_masks=[self.target_masks[r] for r in rows] if self.target_masks else [],
            image_indices=[self.image_indices[i] for i in images],
            input_boxes=take(self.input_boxes),
            input_boxes_labels=take(self.input_boxes_labels),
        )

    def to(self, device: torch.device | str) -> ConceptBatch:
        def move(value: torch.Tensor | None) -> torch.Tensor | None:
            return None if value is None else value.to(device, non_blocking=True)

        return ConceptBatch(
            pixel_values=self.pixel_values.to(device, non_blocking=True),
            prompt_image_index=self.prompt_image_index.to(device),
            prompts=self.prompts,
            prompt_category_ids=self.prompt_category_ids,
            target_boxes=[b.to(device, non_blocking=True) for b in self.target_boxes],
            target_masks=[m.to(device, non_blocking=True) for m in self.target_masks],
            image_indices=self.image_indices,
            input_boxes=move(self.input_boxes),
            input_boxes_labels=move(self.input_boxes_labels),
        )


def collate_concept_samples(samples: list[ConceptSample]) -> ConceptBatch:
    """Stack images and flatten prompts for a :class:`ConceptBatch`."""
    image_of_prompt = [i for i, s in enumerate(samples) for _ in s.prompts]
    return ConceptBatch(
        pixel_values=torch.stack([s.pixel_values for s in samples]),
        prompt_image_index=torch.tensor(image_of_prompt, dtype=torch.long),
        prompts=[p for s in samples for p in s.prompts],
        prompt_category_ids=[c for s in samples for c in s.prompt_category_ids],
        target_boxes=[b for s in samples for b in s.target_boxes],
        target_masks=[m for s in samples for m in s.target_masks],
        image_indices=[s.image_index for s in samples],
    )


class ConceptDataset(Dataset[ConceptSample]):
    """A COCO dataset seen as SAM3 concept samples (image + category prompts + negatives).

    Randomness (augmentation, prompt sampling, synonyms) comes from a generator seeded by
    ``(seed, epoch, index)``: a sample is reproducible, whatever the worker or resume point.

    Args:
        coco: the dataset.
        transform: joint image / box / mask transform (see :mod:`sam3_lora.data.transforms`).
        train: sample prompts and synonyms at random (else: fixed, all categories first).
        max_prompts_per_image: cap on category prompts per image.
        num_negative_prompts: hard-negative prompts per image.
        negative_vocabulary: concepts for hard negatives; None = the built-in list.
        seed: base seed.
    """

    def __init__(
        self,
        coco: CocoDataset,
        transform: SampleTransform,
        train: bool,
        max_prompts_per_image: int = 16,
        num_negative_prompts: int = 2,
        negative_vocabulary: list[str] | None = None,
        seed: int = 0,
    ) -> None:
        self.coco = coco
        self.transform = transform
        self.train = train
        self.max_prompts_per_image = max_prompts_per_image
        self.num_negative_prompts = num_negative_prompts
        self.seed = seed
        self.epoch = 0
        vocabulary = negative_vocabulary or load_negative_vocabulary()
        self.negative_vocabulary, self.excluded_negatives = exclude_overlapping(
            vocabulary, category_texts(coco.categories)
        )
        if self.excluded_negatives and num_negative_prompts:
            logger.info(
                "negative prompts left out (a word in common with a category): %s",
                ", ".join(f"{k} ({v})" for k, v in self.excluded_negatives.items()),
            )
        if num_negative_prompts and not self.negative_vocabulary:
            raise DatasetError(
                "every negative prompt shares a word with a dataset category; give "
                "data.negative_prompts other concepts or set data.num_negative_prompts: 0"
            )
        self.negative_candidates: list[list[str]] | None = None
        self.retention_prompts: list[list[str]] | None = None

    def __len__(self) -> int:
        return len(self.coco)

    def set_negative_candidates(self, per_image: list[list[str]] | None) -> None:
        """Draw image ``i``'s negatives among ``per_image[i]`` only (the verified ones);
        None: among the whole vocabulary."""
        if per_image is not None and len(per_image) != len(self):
            raise ValueError(f"{len(per_image)} candidate lists for {len(self)} images")
        self.negative_candidates = per_image

    def set_retention_prompts(self, per_image: list[list[str]] | None) -> None:
        """Add ``per_image[i]`` to image ``i``'s prompts as retention prompts (no targets)."""
        if per_image is not None and len(per_image) != len(self):
            raise ValueError(f"{len(per_image)} retention lists for {len(self)} images")
        self.retention_prompts = per_image

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation / prompt sampling of every sample (call once per epoch)."""
        self.epoch = epoch

    def _generator(self, index: int) -> tuple[torch.Generator, np.random.Generator]:
        epoch = self.epoch if self.train else 0
        seeds = np.random.SeedSequence([self.seed, epoch, index, int(self.train)])
        torch_seed, numpy_seed = seeds.generate_state(2, dtype=np.uint64)
        generator = torch.Generator().manual_seed(int(torch_seed) & ((1 << 63) - 1))
        return generator, np.random.default_rng(int(numpy_seed))

    def __getitem__(self, index: int) -> ConceptSample:
        torch_generator, rng = self._generator(index)
        image = self.coco.load_image(index)
        instances = [i for i in self.coco.instances(index) if not i.iscrowd and i.area > 1e-6]
        height, width = image.height, image.width
        boxes = np.stack([i.box_xyxy for i in instances]) if instances else np.zeros((0, 4))
        masks = (
            np.stack([_instance_mask(i, height, width) for i in instances])
            if instances
            else (np.zeros((0, height, width), dtype=bool))
        )
        sample = self.transform(image, boxes.astype(np.float32), masks, torch_generator)
        size = sample.pixel_values.shape[-1]
        keep = sample.masks.flatten(1).any(dim=1) if len(instances) else torch.zeros(0, dtype=bool)
        category_of_instance = torch.tensor([i.category_id for i in instances], dtype=torch.long)

        category_ids = self._choose_categories(category_of_instance[keep].tolist(), rng)
        prompts, target_boxes, target_masks = [], [], []
        for category_id in category_ids:
            category = self.coco.category(category_id)
            choices = (category.prompt, *category.synonyms)
            prompts.append(choices[rng.integers(len(choices))] if self.train else choices[0])
            selected = keep & (category_of_instance == category_id)
            target_boxes.append(_xyxy_to_cxcywh(sample.boxes_xyxy[selected], size))
            target_masks.append(sample.masks[selected])
        negatives = self._choose_negatives(rng, index)
        retained = self.retention_prompts[index] if self.retention_prompts else []
        for text in (*negatives, *retained):
            prompts.append(text)
            target_boxes.append(torch.zeros((0, 4)))
            target_masks.append(torch.zeros((0, size, size), dtype=torch.bool))
        return ConceptSample(
            image_index=index,
            pixel_values=sample.pixel_values,
            prompts=prompts,
            prompt_category_ids=[
                *category_ids,
                *[NEGATIVE_PROMPT_ID] * len(negatives),
                *[RETENTION_PROMPT_ID] * len(retained),
            ],
            target_boxes=target_boxes,
            target_masks=target_masks,
        )

    def _choose_categories(self, present_ids: list[int], rng: np.random.Generator) -> list[int]:
        all_ids = [c.id for c in self.coco.categories]
        present = [c for c in all_ids if c in set(present_ids)]
        absent = [c for c in all_ids if c not in set(present_ids)]
        if len(all_ids) <= self.max_prompts_per_image:
            return present + absent
        if len(present) >= self.max_prompts_per_image:
            logger.debug("image has more present categories than max_prompts_per_image")
            return present[: self.max_prompts_per_image]
        room = self.max_prompts_per_image - len(present)
        if self.train:
            picked = rng.choice(len(absent), size=room, replace=False)
            return present + [absent[i] for i in sorted(picked)]
        return present + absent[:room]

    def _choose_negatives(self, rng: np.random.Generator, index: int) -> list[str]:
        pool = self.negative_vocabulary
        if self.negative_candidates is not None:
            pool = self.negative_candidates[index]
        count = min(self.num_negative_prompts, len(pool))
        if not count:
            return []
        if self.train:
            picked = rng.choice(len(pool), size=count, replace=False)
        else:  # a fixed, spread-out selection so validation is comparable across runs
            start = (index * count) % len(pool)
            picked = [(start + k) % len(pool) for k in range(count)]
        return [pool[i] for i in picked]


def _instance_mask(instance: object, height: int, width: int) -> np.ndarray:
    mask = getattr(instance, "mask", None)
    if mask is not None:
        return mask
    # Box-only annotation: the box is the best mask we have (the converter warned about it).
    x0, y0, x1, y1 = (round(float(v)) for v in instance.box_xyxy)  # type: ignore[attr-defined]
    filled = np.zeros((height, width), dtype=bool)
    filled[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
    return filled


def _xyxy_to_cxcywh(boxes: torch.Tensor, size: int) -> torch.Tensor:
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1) / size
