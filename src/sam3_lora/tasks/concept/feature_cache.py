"""Vision features cached across epochs, for training with a frozen vision encoder.

With no adapter and no trainable weight in the ViT + neck (decoder-only presets) and a fixed
image transform (``data.augment: false``, no flips), an image's vision features are the same
every epoch: :class:`VisionFeatureCache` keeps them after the first epoch, keyed by
(transform, dataset index), and :class:`~sam3_lora.tasks.concept.module.ConceptModel` reuses them.

Trade-off: augmentation changes the pixels every epoch, so a cache would train on stale
features; it is therefore refused with ``data.augment`` (or flips) on. Memory: at 1008 px
SAM3's neck gives 4 FPN levels of 256 channels (288^2, 144^2, 72^2, 36^2): 28.2 M values per
image, about 56 MB in bf16 and 113 MB in fp32 (146 images: 8 / 16 GB), kept on the CPU by
default (``storage_device``) and copied to the GPU per step; position encodings are stored once.
Images are still loaded and decoded by the data loader (only the ViT + neck is skipped).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch
from torch import Tensor
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput


class VisionFeatureCache:
    """Per-image FPN features, detached, on ``storage_device``.

    Args:
        transform_key: names the image transform (features of another transform never match).
        storage_device: where the cached features live (None: where they were computed).
    """

    def __init__(self, transform_key: Hashable = "fixed", storage_device: str | None = "cpu"):
        self.transform_key = transform_key
        self.storage_device = storage_device
        self._features: dict[Hashable, tuple[Tensor, ...]] = {}
        self._positions: tuple[Tensor, ...] | None = None
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._features)

    def clear(self) -> None:
        """Forget every cached image."""
        self._features.clear()
        self._positions = None

    def nbytes(self) -> int:
        """Bytes held by the cache."""
        tensors = [t for f in self._features.values() for t in f] + list(self._positions or ())
        return sum(t.numel() * t.element_size() for t in tensors)

    def _key(self, image_index: int) -> Hashable:
        return (self.transform_key, int(image_index))

    def features(
        self,
        image_indices: list[int],
        pixel_values: Tensor,
        compute: Callable[[Tensor], Sam3VisionEncoderOutput],
    ) -> Sam3VisionEncoderOutput:
        """The vision features of the batch's images: cached ones reused, the others computed
        (``compute(pixel_values[missing])``) and stored."""
        missing = [
            i for i, index in enumerate(image_indices) if self._key(index) not in self._features
        ]
        self.hits += len(image_indices) - len(missing)
        self.misses += len(missing)
        device = pixel_values.device
        if missing:
            with torch.no_grad():
                computed = compute(pixel_values[missing])
            store = self.storage_device or device
            for row, i in enumerate(missing):
                self._features[self._key(image_indices[i])] = tuple(
                    f[row].detach().to(store, copy=True) for f in computed.fpn_hidden_states
                )
            if self._positions is None:
                self._positions = tuple(
                    p[:1].detach().to(store, copy=True) for p in computed.fpn_position_encoding
                )
        per_image = [self._features[self._key(index)] for index in image_indices]
        levels = len(per_image[0])
        hidden = tuple(
            torch.stack([f[level] for f in per_image]).to(device) for level in range(levels)
        )
        positions = tuple(
            p.to(device).expand(len(image_indices), *p.shape[1:]) for p in self._positions
        )
        return Sam3VisionEncoderOutput(fpn_hidden_states=hidden, fpn_position_encoding=positions)
