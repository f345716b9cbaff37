"""Samples of the promptable task: one image and its objects' masks, from a COCO dataset.

Each image is resized as the model's own processor does (square, bilinear with antialiasing,
aspect ratio not kept) and normalised with its statistics (:class:`~.spec.ImageInput`). Its
objects are the non-crowd instances; an instance without a segmentation (box-only datasets)
gets its box as mask, the best target there is. Masks are resized with nearest-exact sampling;
objects that vanish at the model resolution are dropped. At most ``max_objects_per_image``
objects per image (training: a random subset per epoch; validation: the first ones), so an
image with hundreds of instances fits in memory.

Prompts are not sampled here: the model's forward draws them (corrective clicks depend on its
own predictions), from the batch's ``prompt_seed``. Everything random is seeded by
``(seed, epoch, index)``, so a sample and its prompts are the same whatever the worker or the
resume point.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from sam3_lora.data.coco import CocoDataset, ImageRecord, decode_segmentation
from sam3_lora.tasks.promptable.spec import ImageInput

logger = logging.getLogger(__name__)


@dataclass
class PromptSample:
    """One image with N objects, at the model resolution S.

    Attributes:
        image_index: index in the COCO dataset.
        pixel_values: float32 [3, S, S], normalised.
        masks: bool [N, S, S].
        boxes: float32 [N, 4], the annotations' boxes (xyxy) in model-input pixels.
        category_ids / annotation_ids: long [N].
        original_size: (height, width) of the image file.
        seed: seeds the prompts drawn for this sample.
    """

    image_index: int
    pixel_values: Tensor
    masks: Tensor
    boxes: Tensor
    category_ids: Tensor
    annotation_ids: Tensor
    original_size: tuple[int, int]
    seed: int


@dataclass
class PromptBatch:
    """Samples collated for one step: I images, N objects in total.

    Attributes:
        pixel_values: [I, 3, S, S].
        object_image_index: long [N], the image of each object.
        target_masks: bool [N, S, S].
        target_boxes: float32 [N, 4] (annotation boxes, model-input pixels).
        category_ids / annotation_ids: long [N].
        image_indices: I dataset indices.
        original_sizes: I (height, width).
        prompt_seed: seeds the prompt sampling of this batch (from its samples' seeds).
    """

    pixel_values: Tensor
    object_image_index: Tensor
    target_masks: Tensor
    target_boxes: Tensor
    category_ids: Tensor
    annotation_ids: Tensor
    image_indices: list[int]
    original_sizes: list[tuple[int, int]]
    prompt_seed: int = 0

    @property
    def num_images(self) -> int:
        return len(self.image_indices)

    @property
    def num_prompts(self) -> int:
        """Objects, each prompted once per prediction step."""
        return len(self.object_image_index)

    num_objects = num_prompts

    @property
    def num_targets(self) -> int:
        """What the loss normalises by: the objects (Meta's ``num_objects``)."""
        return len(self.object_image_index)

    def to(self, device: torch.device | str) -> PromptBatch:
        return PromptBatch(
            pixel_values=self.pixel_values.to(device, non_blocking=True),
            object_image_index=self.object_image_index.to(device),
            target_masks=self.target_masks.to(device, non_blocking=True),
            target_boxes=self.target_boxes.to(device),
            category_ids=self.category_ids.to(device),
            annotation_ids=self.annotation_ids.to(device),
            image_indices=self.image_indices,
            original_sizes=self.original_sizes,
            prompt_seed=self.prompt_seed,
        )


def collate_prompt_samples(samples: list[PromptSample]) -> PromptBatch:
    """Stack the images and concatenate their objects."""
    seeds = np.random.SeedSequence([s.seed for s in samples]).generate_state(1, dtype=np.uint64)
    return PromptBatch(
        pixel_values=torch.stack([s.pixel_values for s in samples]),
        object_image_index=torch.tensor(
            [i for i, s in enumerate(samples) for _ in range(len(s.masks))], dtype=torch.long
        ),
        target_masks=torch.cat([s.masks for s in samples]),
        target_boxes=torch.cat([s.boxes for s in samples]),
        category_ids=torch.cat([s.category_ids for s in samples]),
        annotation_ids=torch.cat([s.annotation_ids for s in samples]),
        image_indices=[s.image_index for s in samples],
        original_sizes=[s.original_size for s in samples],
        prompt_seed=int(seeds[0]) & ((1 << 63) - 1),
    )


class PromptDataset(Dataset[PromptSample]):
    """A COCO dataset seen as promptable samples (image + per-object masks).

    Images without a usable instance (non-crowd, positive area) are skipped.

    Args:
        coco: the dataset.
        image_input: resolution and normalisation of the model (``ImageInput.from_processor``).
        train: random object subsets (and flips) per epoch; else fixed.
        max_objects_per_image: cap on objects per image; None = all.
        horizontal_flip: mirror training images with probability 0.5 (Meta's SAM2.1 recipe).
        seed: base seed.
    """

    def __init__(
        self,
        coco: CocoDataset,
        image_input: ImageInput,
        train: bool,
        max_objects_per_image: int | None = 16,
        horizontal_flip: bool = False,
        seed: int = 0,
    ) -> None:
        if max_objects_per_image is not None and max_objects_per_image < 1:
            raise ValueError(f"max_objects_per_image must be >= 1, got {max_objects_per_image}")
        self.coco = coco
        self.image_input = image_input
        self.train = train
        self.max_objects_per_image = max_objects_per_image
        self.horizontal_flip = horizontal_flip
        self.seed = seed
        self.epoch = 0
        self.indices = [i for i in range(len(coco)) if self._candidates(i)]
        skipped = len(coco) - len(self.indices)
        if skipped:
            logger.info(
                "%s: %d of %d images have no non-crowd instance and are skipped",
                coco.annotation_file,
                skipped,
                len(coco),
            )
        self._mean = torch.tensor(image_input.mean).view(3, 1, 1)
        self._std = torch.tensor(image_input.std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        """Change the object subsets, flips and prompts of every sample (call once per epoch)."""
        self.epoch = epoch

    def _candidates(self, index: int) -> list[int]:
        """Positions (in the image's annotations) of its non-crowd, non-empty instances."""
        return [
            position
            for position, instance in enumerate(self.coco.instances(index, with_masks=False))
            if not instance.iscrowd and instance.area > 1e-6
        ]

    def _seeds(self, index: int) -> tuple[torch.Generator, np.random.Generator, int]:
        epoch = self.epoch if self.train else 0
        sequence = np.random.SeedSequence([self.seed, epoch, index, int(self.train)])
        torch_seed, numpy_seed, prompt_seed = sequence.generate_state(3, dtype=np.uint64)
        generator = torch.Generator().manual_seed(int(torch_seed) & ((1 << 63) - 1))
        return generator, np.random.default_rng(int(numpy_seed)), int(prompt_seed)

    def __getitem__(self, position: int) -> PromptSample:
        index = self.indices[position]
        generator, rng, prompt_seed = self._seeds(index)
        record = self.coco.images[index]
        candidates = self._candidates(index)
        cap = self.max_objects_per_image
        if cap is not None and len(candidates) > cap:
            if self.train:
                candidates = sorted(rng.choice(candidates, size=cap, replace=False).tolist())
            else:
                candidates = candidates[:cap]

        size = self.image_input.resolution
        pixels = F.pil_to_tensor(self.coco.load_image(index))
        pixels = F.resize(pixels, [size, size], InterpolationMode.BILINEAR, antialias=True)
        instances = self.coco.instances(index, with_masks=False)
        annotations = self.coco.raw_annotations(index)
        masks = torch.from_numpy(
            np.stack(
                [self._mask(annotations[p], instances[p].box_xyxy, record) for p in candidates]
            )
        )
        masks = F.resize(masks.to(torch.uint8), [size, size], InterpolationMode.NEAREST_EXACT)
        masks = masks.bool()
        scale = torch.tensor([size / record.width, size / record.height] * 2)
        boxes = torch.from_numpy(np.stack([instances[p].box_xyxy for p in candidates])) * scale
        kept = masks.flatten(1).any(1)
        if not kept.all():
            logger.debug("image %s: %d objects vanish at %d px", record.id, (~kept).sum(), size)

        if self.train and self.horizontal_flip and torch.rand(1, generator=generator) < 0.5:
            pixels, masks = pixels.flip(-1), masks.flip(-1)
            boxes = torch.stack(
                [size - boxes[:, 2], boxes[:, 1], size - boxes[:, 0], boxes[:, 3]], 1
            )

        pixel_values = (pixels.float() / 255 - self._mean) / self._std
        return PromptSample(
            image_index=index,
            pixel_values=pixel_values,
            masks=masks[kept],
            boxes=boxes[kept].float(),
            category_ids=torch.tensor([instances[p].category_id for p in candidates])[kept],
            annotation_ids=torch.tensor([instances[p].annotation_id for p in candidates])[kept],
            original_size=(record.height, record.width),
            seed=prompt_seed,
        )

    @staticmethod
    def _mask(annotation: dict, box_xyxy: np.ndarray, record: ImageRecord) -> np.ndarray:
        """The instance's mask at the image size; its box filled when it has no segmentation."""
        height, width = record.height, record.width
        segmentation = annotation.get("segmentation")
        if segmentation:
            return decode_segmentation(segmentation, height, width)
        x0, y0, x1, y1 = (round(float(v)) for v in box_xyxy)
        filled = np.zeros((height, width), dtype=bool)
        filled[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
        return filled
