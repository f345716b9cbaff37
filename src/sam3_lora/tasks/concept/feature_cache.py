"""Vision features cached across epochs, for training with a frozen vision encoder.

With no adapter and no trainable weight in the ViT + neck (decoder-only presets) and a fixed
image transform (``data.augment: false``, no flips), an image's vision features are the same
every epoch: :class:`VisionFeatureCache` keeps them after the first epoch, keyed by
(transform, dataset index), and :class:`~sam3_lora.tasks.concept.module.ConceptModel` reuses them.

Trade-off: augmentation changes the pixels every epoch, so a cache would train on stale
features; it is therefore refused with ``data.augment`` (or flips) on. Size: at 1008 px SAM3's
neck gives 4 FPN levels of 256 channels (288^2, 144^2, 72^2, 36^2): 28.2 M values per image,
about 56 MB in bf16 and 113 MB in fp32 (1,000 images: 56 / 113 GB). Two storages:

- ``memory``: CPU memory (copied to the GPU per step), up to ``max_bytes``; images past the
  budget are computed every epoch (one warning says so) instead of exhausting the host.
- ``disk``: one safetensors file per image in ``directory``, written atomically, so the
  processes of a distributed run share what each computed (their data shards change every
  epoch); files are removed when the process that wrote them exits, and writing stops while
  the disk has less than ``min_free_bytes`` free.

Position encodings are the same for every image and kept once in memory. Images are still
loaded and decoded by the data loader (only the ViT + neck is skipped).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Hashable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

logger = logging.getLogger(__name__)

DISK_MIN_FREE_BYTES = 5 * 2**30


class VisionFeatureCache:
    """Per-image FPN features, detached, in CPU memory or on disk.

    Args:
        transform_key: names the image transform (features of another transform never match).
        storage_device: where features kept in memory live (None: where they were computed).
        max_bytes: memory budget of the stored features (None: no limit).
        directory: store on disk in this folder instead of memory.
        min_free_bytes: disk storage stops while the disk has less free space than this.
    """

    def __init__(
        self,
        transform_key: Hashable = "fixed",
        storage_device: str | None = "cpu",
        max_bytes: int | None = None,
        directory: str | Path | None = None,
        min_free_bytes: int = DISK_MIN_FREE_BYTES,
    ):
        self.transform_key = transform_key
        self.storage_device = storage_device
        self.max_bytes = max_bytes
        self.directory = Path(directory) if directory is not None else None
        self.min_free_bytes = min_free_bytes
        self._features: dict[Hashable, tuple[Tensor, ...]] = {}
        self._positions: tuple[Tensor, ...] | None = None
        self._stored_bytes = 0
        self._written: list[Path] = []
        self.hits = 0
        self.misses = 0
        self.not_stored = 0  # images computed but not kept: budget or disk full
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            atexit.register(self.clear)

    @property
    def storage(self) -> str:
        """``memory`` or ``disk``."""
        return "memory" if self.directory is None else "disk"

    def __len__(self) -> int:
        if self.directory is None:
            return len(self._features)
        return len(list(self.directory.glob("*.safetensors")))

    def clear(self) -> None:
        """Forget every cached image (on disk: the files this process wrote)."""
        self._features.clear()
        self._positions = None
        self._stored_bytes = 0
        for path in self._written:
            path.unlink(missing_ok=True)
        self._written.clear()
        if self.directory is not None:
            for folder in (self.directory, self.directory.parent):  # <output_dir>/feature-cache
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty: no other process left files in it

    def nbytes(self) -> int:
        """Bytes of features stored by this process (memory or disk), position encodings
        included."""
        positions = sum(t.numel() * t.element_size() for t in self._positions or ())
        return self._stored_bytes + positions

    def _key(self, image_index: int) -> Hashable:
        return (self.transform_key, int(image_index))

    def _path(self, image_index: int) -> Path:
        assert self.directory is not None
        digest = hashlib.sha1(repr(self._key(image_index)).encode()).hexdigest()[:16]
        return self.directory / f"image-{int(image_index)}-{digest}.safetensors"

    def _lookup(self, image_index: int) -> tuple[Tensor, ...] | None:
        if self.directory is None:
            return self._features.get(self._key(image_index))
        path = self._path(image_index)
        if not path.is_file():
            return None
        try:
            stored = load_file(path)
        except (OSError, SafetensorError):  # unreadable (not ours to trust): computed again
            return None
        return tuple(stored[f"level{k}"] for k in range(len(stored)))

    def _store(self, image_index: int, levels: tuple[Tensor, ...]) -> None:
        size = sum(t.numel() * t.element_size() for t in levels)
        if self.max_bytes is not None and self._stored_bytes + size > self.max_bytes:
            self._refuse(f"its budget of {self.max_bytes / 2**30:.1f} GiB is used")
            return
        if self.directory is None:
            self._features[self._key(image_index)] = levels
        else:
            if shutil.disk_usage(self.directory).free - size < self.min_free_bytes:
                self._refuse(f"{self.directory} has less than "
                             f"{self.min_free_bytes / 2**30:.0f} GiB free")  # fmt: skip
                return
            path = self._path(image_index)
            partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
            try:
                save_file({f"level{k}": t.contiguous() for k, t in enumerate(levels)}, partial)
                os.replace(partial, path)  # never a half-written file under the final name
            except OSError as error:
                partial.unlink(missing_ok=True)
                self._refuse(f"writing {path.name} failed ({error.strerror or error})")
                return
            self._written.append(path)
        self._stored_bytes += size

    def _refuse(self, reason: str) -> None:
        if self.not_stored == 0:
            logger.warning(
                "vision-feature cache (%s): %s; images past this are computed every epoch "
                "(training.feature_cache_max_gb, training.feature_cache_storage: disk)",
                self.storage,
                reason,
            )
        self.not_stored += 1

    def features(
        self,
        image_indices: list[int],
        pixel_values: Tensor,
        compute: Callable[[Tensor], Sam3VisionEncoderOutput],
    ) -> Sam3VisionEncoderOutput:
        """The vision features of the batch's images: cached ones reused, the others computed
        (``compute(pixel_values[missing])``) and stored."""
        device = pixel_values.device
        found = {i: self._lookup(index) for i, index in enumerate(image_indices)}
        missing = [i for i, levels in found.items() if levels is None]
        self.hits += len(image_indices) - len(missing)
        self.misses += len(missing)
        if missing or self._positions is None:
            rows = missing or [0]  # the position encodings once, when every image was on disk
            with torch.no_grad():
                computed = compute(pixel_values[rows])
            store = self.storage_device or device
            for row, i in enumerate(missing):
                levels = tuple(f[row].detach().to(store, copy=True)
                               for f in computed.fpn_hidden_states)  # fmt: skip
                found[i] = levels
                self._store(image_indices[i], levels)
            if self._positions is None:
                self._positions = tuple(
                    p[:1].detach().to(store, copy=True) for p in computed.fpn_position_encoding
                )
        per_image = [found[i] for i in range(len(image_indices))]
        hidden = tuple(
            torch.stack([f[level] for f in per_image]).to(device)
            for level in range(len(per_image[0]))
        )
        positions = tuple(
            p.to(device).expand(len(image_indices), *p.shape[1:]) for p in self._positions
        )
        return Sam3VisionEncoderOutput(fpn_hidden_states=hidden, fpn_position_encoding=positions)
