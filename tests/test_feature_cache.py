"""The vision-feature cache (``training.cache_vision_features``) on the tiny SAM3."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sam3_lora.config import load_config
from sam3_lora.errors import ConfigError
from sam3_lora.models import load_sam3
from sam3_lora.tasks.concept.recipe import build_concept_recipe
from tests.conftest import tiny_training_overrides

DECODER_ONLY = {
    "lora.apply_to_vision_encoder": False,
    "lora.apply_to_detr_decoder": True,
    "lora.target_modules": ["q_proj", "k_proj", "v_proj"],
    "lora.dropout": 0.0,
    "data.augment": False,
    "training.cache_vision_features": True,
}


def _recipe(shapes_dir: Path, tmp_path: Path, **extra: object):
    overrides = tiny_training_overrides(shapes_dir, tmp_path, **{**DECODER_ONLY, **extra})
    torch.manual_seed(0)
    return build_concept_recipe(load_config(None, overrides), load_sam3("tiny-random"))


def test_cache_gives_the_same_losses_and_runs_the_vision_encoder_once_per_image(
    shapes_dir: Path, tmp_path: Path
) -> None:
    recipe = _recipe(shapes_dir, tmp_path)
    task, dataset = recipe.task, recipe.train_dataset
    cache = task.model.feature_cache
    assert cache is not None
    images_encoded = []
    task.model.sam3.vision_encoder.register_forward_hook(
        lambda _m, args, _o: images_encoded.append(len(args[0]))
    )
    for module in task.model.modules():  # the tiny SAM3's DETR dropout would differ per run
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    batches = [task.collate([dataset[i], dataset[i + 1]]) for i in range(0, len(dataset), 2)]
    task.model.train()

    def epoch_losses() -> list[float]:
        losses = []
        for batch in batches:
            loss = task.loss(task.model(batch), batch)["loss"]
            loss.backward()
            losses.append(loss.item())
        return losses

    cached = [epoch_losses(), epoch_losses()]
    assert sum(images_encoded) == len(dataset)
    assert (cache.hits, cache.misses, len(cache)) == (len(dataset), len(dataset), len(dataset))
    task.model.feature_cache = None
    plain = epoch_losses()
    assert sum(images_encoded) == 2 * len(dataset)
    for losses in cached:
        assert losses == pytest.approx(plain, rel=1e-5)


def test_cache_is_not_used_in_eval_mode(shapes_dir: Path, tmp_path: Path) -> None:
    recipe = _recipe(shapes_dir, tmp_path)
    task = recipe.task
    batch = task.collate([recipe.train_dataset[0]])
    task.model.eval()
    with torch.no_grad():
        task.model(batch)
    assert len(task.model.feature_cache) == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"lora.apply_to_vision_encoder": True}, "frozen vision encoder"),
        ({"data.augment": True}, "data.augment"),
        ({"data.horizontal_flip": True}, "data.augment"),
    ],
)
def test_cache_refuses_changing_features(
    shapes_dir: Path, tmp_path: Path, extra: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _recipe(shapes_dir, tmp_path, **extra)
