"""Verified hard negatives: the base model checks each image's candidate negatives once.

A vocabulary concept is a good negative for an image only when it is really absent from it:
``road`` is no negative of a pothole picture. Before training, the base model (no adapter) runs
once on every image with a pool of candidate negatives (``data.negative_verify_pool`` concepts, a
seeded sample of the vocabulary per image; vision features are computed once per image and shared
by its candidates, and the pass stops after the scoring head: no masks are decoded). A candidate
scored at or above ``data.negative_verify_threshold`` is present on that image, not a negative.
The result is cached next to the dataset (:mod:`sam3_lora.data.negative_cache`).

Under N processes the images are split between them, the scores gathered, and the main process
writes the cache: each image is checked once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from sam3_lora.data.coco import CocoDataset
from sam3_lora.data.negative_cache import (
    NegativeCheck,
    cache_key,
    cache_path,
    file_digest,
    read_cache,
    text_digest,
    write_cache,
)
from sam3_lora.data.transforms import SampleTransform, build_transforms
from sam3_lora.launch import process_state
from sam3_lora.tasks.concept.module import ConceptModel
from sam3_lora.tasks.concept.samples import ConceptBatch
from sam3_lora.tasks.concept.spec import PIXEL_MEAN, PIXEL_STD
from sam3_lora.tasks.spec import unwrap_model

logger = logging.getLogger(__name__)

_POOL_SALT = 0x6E6567  # "neg": pools differ from the dataset's own sampling streams
SCORE_DECIMALS = 5


def candidate_pools(
    vocabulary: list[str], pool_size: int, seed: int, image_ids: list[int]
) -> dict[int, list[str]]:
    """Per image id, ``pool_size`` candidates of ``vocabulary`` (all when it is smaller), in
    vocabulary order; seeded by ``(seed, image id)``."""
    if pool_size >= len(vocabulary):
        return {i: list(vocabulary) for i in image_ids}
    pools = {}
    for image_id in image_ids:
        rng = np.random.default_rng(np.random.SeedSequence([seed, image_id, _POOL_SALT]))
        picked = sorted(rng.choice(len(vocabulary), size=pool_size, replace=False).tolist())
        pools[image_id] = [vocabulary[k] for k in picked]
    return pools


class _ScoredEnough(Exception):
    """Raised by the scoring head's hook: the masks are not needed."""


@torch.inference_mode()
def score_prompts(model: ConceptModel, batch: ConceptBatch) -> torch.Tensor:
    """The best query score (sigmoid(logit) x sigmoid(presence)) of every prompt of ``batch``:
    the model's own forward, stopped once the scoring head has run (the mask decoder, most of
    the per-prompt cost, is skipped). Text prompts only."""
    sam3 = model.sam3
    captured: dict[str, torch.Tensor] = {}

    def on_decoder(_module: object, _args: object, output: Any) -> None:
        captured["presence"] = output.presence_logits

    def on_scoring(_module: object, _args: object, output: torch.Tensor) -> None:
        captured["logits"] = output
        raise _ScoredEnough

    handles = [
        sam3.detr_decoder.register_forward_hook(on_decoder),
        sam3.dot_product_scoring.register_forward_hook(on_scoring),
    ]
    try:
        model(batch)
    except _ScoredEnough:
        pass
    finally:
        for handle in handles:
            handle.remove()
    logits = captured["logits"][-1].squeeze(-1).float()  # [B, Q]
    presence = captured["presence"][-1].float().reshape(-1, 1)  # [B, 1]
    return (logits.sigmoid() * presence.sigmoid()).amax(dim=1)


def model_fingerprint(network: torch.nn.Module) -> str:
    """A cheap identity of the base weights: name, config and a sample of the tensors (LoRA
    weights left out, so a model with an adapter has its base's fingerprint)."""
    sam3 = unwrap_model(network)
    digest = hashlib.sha256()
    config = sam3.config.to_dict()
    config.pop("name_or_path", None)
    config.pop("_name_or_path", None)
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    tensors = [p for n, p in sam3.named_parameters() if "lora_" not in n]
    step = max(len(tensors) // 16, 1)
    with torch.no_grad():
        for tensor in tensors[::step]:
            digest.update(str(tuple(tensor.shape)).encode())
            sample = tensor.detach().reshape(-1)[:4096].float().cpu().numpy()
            digest.update(sample.tobytes())
    return digest.hexdigest()[:16]


class _Images(Dataset):
    def __init__(self, coco: CocoDataset, indices: list[int], transform: SampleTransform):
        self.coco, self.indices, self.transform = coco, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[int, torch.Tensor]:
        index = self.indices[k]
        image = self.coco.load_image(index)
        empty = np.zeros((0, image.height, image.width), dtype=bool)
        sample = self.transform(image, np.zeros((0, 4), np.float32), empty)
        return index, sample.pixel_values


def _collate(items: list[tuple[int, torch.Tensor]]) -> tuple[list[int], torch.Tensor]:
    return [i for i, _ in items], torch.stack([p for _, p in items])


def verify_negatives(
    coco: CocoDataset,
    model: ConceptModel,
    vocabulary: list[str],
    *,
    resolution: int,
    pool_size: int,
    seed: int,
    threshold: float,
    batch_size: int = 8,
    num_workers: int = 0,
    model_name: str = "",
    timeout_s: int = 600,
    device: torch.device | None = None,
    indices: list[int] | None = None,
) -> NegativeCheck:
    """Score each image's candidate negatives with ``model`` (the base: call it with the
    adapter disabled); images already in the cache are read from it, the others scored and
    added to it.

    Args:
        coco: the split.
        model: the concept module of the base model.
        vocabulary: the dataset's negative vocabulary (already without overlapping concepts).
        resolution: model input size (images are resized to it, as in validation).
        pool_size / seed: the candidates of each image (:func:`candidate_pools`).
        threshold: score at or above which a candidate is present.
        batch_size: images per forward (each with its whole pool).
        num_workers: image-loading workers.
        model_name: the name the user gave the model (reports, cache).
        timeout_s: distributed collectives' timeout.
        device: where the pass runs (default: this process's GPU, else the CPU); the model is
            moved back afterwards.
        indices: the images to check (default: all); the result holds these only.
    """
    indices = list(range(len(coco))) if indices is None else list(indices)
    wanted = [coco.images[i].id for i in indices]
    pools = candidate_pools(vocabulary, pool_size, seed, wanted)
    key = {
        "annotation_sha256": file_digest(coco.annotation_file),
        "images": len(coco),
        "model": model_fingerprint(model.network),
        "vocabulary_sha256": text_digest(vocabulary),
        "pool": pool_size,
        "seed": seed,
        "resolution": resolution,
    }
    path = cache_path(coco.annotation_file, cache_key(key))
    state = process_state(timeout_s)
    cached = read_cache(path, key, threshold)
    scores = dict(cached.scores) if cached is not None else {}
    missing = [i for i, image_id in zip(indices, wanted, strict=True) if image_id not in scores]
    if state is not None:  # the same images on every process, whatever each one's cache says
        from accelerate.utils import gather_object

        missing = sorted(set().union(*gather_object([missing])))
    check = NegativeCheck(
        concepts=list(vocabulary),
        scores={},
        threshold=threshold,
        dataset=str(coco.annotation_file),
        model=model_name,
        cache_file=cached.cache_file if cached is not None else None,
        from_cache=not missing,
    )
    if missing:
        rank, processes = (0, 1) if state is None else (state.process_index, state.num_processes)
        if device is None:
            device = state.device if state is not None else _default_device()
        home = next(model.parameters()).device
        started = time.perf_counter()
        model.to(device)
        try:
            found = _score_images(
                coco,
                model,
                pools,
                missing[rank::processes],
                resolution,
                batch_size,
                num_workers,
                show=rank == 0,
            )
        finally:
            model.to(home)
        if state is not None:
            from accelerate.utils import gather_object

            for part in gather_object([found]):
                scores.update(part)
        else:
            scores.update(found)
        check.seconds = time.perf_counter() - started
        check.scores = scores
        if rank == 0:
            check.cache_file = write_cache(check, path, key)
        if state is not None:
            state.wait_for_everyone()  # the file exists before anyone goes on
    else:
        logger.info("negative verification read from %s", check.cache_file)
    check.scores = {image_id: scores[image_id] for image_id in wanted}
    return check


def _score_images(
    coco: CocoDataset,
    model: ConceptModel,
    pools: dict[int, list[str]],
    indices: list[int],
    resolution: int,
    batch_size: int,
    num_workers: int,
    show: bool,
) -> dict[int, dict[str, float]]:
    """image id -> candidate -> best score, for the images ``indices`` of ``coco``."""
    transform = build_transforms(
        resolution, train=False, pixel_mean=PIXEL_MEAN, pixel_std=PIXEL_STD
    )
    loader = DataLoader(
        _Images(coco, indices, transform),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
    )
    device = next(model.parameters()).device
    scores: dict[int, dict[str, float]] = {}
    best: list[float] = []
    progress = tqdm(
        total=len(indices), desc="verifying negatives", unit="img", disable=not show, leave=False
    )
    with _eval_mode(model):
        for chunk, pixel_values in loader:
            ids = [coco.images[i].id for i in chunk]
            prompts = [p for i in ids for p in pools[i]]
            if prompts:
                batch = ConceptBatch(
                    pixel_values=pixel_values,
                    prompt_image_index=torch.tensor(
                        [k for k, i in enumerate(ids) for _ in pools[i]], dtype=torch.long
                    ),
                    prompts=prompts,
                    prompt_category_ids=[0] * len(prompts),
                    target_boxes=[],
                    target_masks=[],
                    image_indices=chunk,
                ).to(device)
                with _autocast(device):
                    best = score_prompts(model, batch).tolist()
            row = 0
            for image_id in ids:
                scores[image_id] = {}
                for concept in pools[image_id]:
                    # rounded as cached: a fresh and a cached run decide alike
                    scores[image_id][concept] = round(float(best[row]), SCORE_DECIMALS)
                    row += 1
            progress.update(len(chunk))
    progress.close()
    return scores


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode inside the block; afterwards every submodule gets its own mode back."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _autocast(device: torch.device) -> Any:
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
