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


def _epoch_losses(task, batches) -> list[float]:
    losses = []
    for batch in batches:
        loss = task.loss(task.model(batch), batch)["loss"]
        loss.backward()
        losses.append(loss.item())
    return losses


def _prepared(recipe):
    """The task in training mode without dropout (the tiny SAM3's DETR dropout would differ per
    run) and its training set in batches of two."""
    task, dataset = recipe.task, recipe.train_dataset
    for module in task.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    task.model.train()
    return task, [task.collate([dataset[i], dataset[i + 1]]) for i in range(0, len(dataset), 2)]


def test_cache_gives_the_same_losses_and_runs_the_vision_encoder_once_per_image(
    shapes_dir: Path, tmp_path: Path
) -> None:
    recipe = _recipe(shapes_dir, tmp_path)
    task, batches = _prepared(recipe)
    images = len(recipe.train_dataset)
    cache = task.model.feature_cache
    assert cache is not None
    images_encoded = []
    task.model.sam3.vision_encoder.register_forward_hook(
        lambda _m, args, _o: images_encoded.append(len(args[0]))
    )
    cached = [_epoch_losses(task, batches), _epoch_losses(task, batches)]
    assert sum(images_encoded) == images
    assert (cache.hits, cache.misses, len(cache)) == (images, images, images)
    task.model.feature_cache = None
    plain = _epoch_losses(task, batches)
    assert sum(images_encoded) == 2 * images
    for losses in cached:
        assert losses == pytest.approx(plain, rel=1e-5)


def test_memory_budget_keeps_what_fits_and_says_so(
    shapes_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recipe = _recipe(shapes_dir, tmp_path)
    task, batches = _prepared(recipe)
    cache = task.model.feature_cache
    assert cache.storage == "memory" and cache.max_bytes is not None  # default: half the RAM
    task.model.feature_cache = None
    expected = _epoch_losses(task, batches)
    task.model.feature_cache = cache
    first = task.collate([recipe.train_dataset[0]])
    with torch.no_grad():
        one_image = task.model.sam3.get_vision_features(pixel_values=first.pixel_values)
    per_image = sum(f[0].numel() * f.element_size() for f in one_image.fpn_hidden_states)
    cache.max_bytes = 3 * per_image  # three of the images fit
    with caplog.at_level("WARNING"):
        losses = [_epoch_losses(task, batches), _epoch_losses(task, batches)]
    images = len(recipe.train_dataset)
    assert len(cache) == 3 and cache.not_stored == 2 * (images - 3)
    assert cache.hits == 3 and cache.misses == 2 * images - 3
    assert sum("budget" in r.getMessage() for r in caplog.records) == 1  # one warning
    for epoch in losses:
        assert epoch == pytest.approx(expected, rel=1e-5)


def test_disk_cache_is_shared_between_processes_and_removed(
    shapes_dir: Path, tmp_path: Path
) -> None:
    overrides = {"training.feature_cache_storage": "disk"}
    recipe = _recipe(shapes_dir, tmp_path, **overrides)
    task, batches = _prepared(recipe)
    cache = task.model.feature_cache
    assert cache.directory.parent == tmp_path / "feature-cache"
    assert "vision-feature cache: disk" in recipe.description
    task.model.feature_cache = None
    expected = _epoch_losses(task, batches)
    task.model.feature_cache = cache
    assert _epoch_losses(task, batches) == pytest.approx(expected, rel=1e-5)
    files = sorted(cache.directory.glob("*.safetensors"))
    assert len(files) == len(recipe.train_dataset)
    assert not list(cache.directory.glob("*.partial"))  # written under a temporary name first

    # A second process of the run (the same config): every image comes from the first one's
    # files; its vision encoder runs once, for the position encodings.
    other = _recipe(shapes_dir, tmp_path, **overrides)
    other_task, other_batches = _prepared(other)
    encoded: list[int] = []
    other_task.model.sam3.vision_encoder.register_forward_hook(
        lambda _m, args, _o: encoded.append(len(args[0]))
    )
    assert other_task.model.feature_cache.directory == cache.directory
    assert _epoch_losses(other_task, other_batches) == pytest.approx(expected, rel=1e-5)
    assert sum(encoded) == 1 and other_task.model.feature_cache.misses == 0

    files[0].write_bytes(b"truncated")  # a file of a killed process: computed again
    assert _epoch_losses(task, batches) == pytest.approx(expected, rel=1e-5)
    cache.clear()
    other_task.model.feature_cache.clear()
    assert not cache.directory.exists() and not cache.directory.parent.exists()


def test_disk_cache_of_another_split_is_another_folder(shapes_dir: Path, tmp_path: Path) -> None:
    overrides = {"training.feature_cache_storage": "disk"}
    first = _recipe(shapes_dir, tmp_path, **overrides).task.model.feature_cache
    second = _recipe(shapes_dir, tmp_path, **overrides, **{"data.train": str(shapes_dir / "valid")})
    assert second.task.model.feature_cache.directory != first.directory


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


def test_a_training_run_reports_the_cache_in_its_summary(shapes_dir: Path, tmp_path: Path) -> None:
    from sam3_lora.training import SAM3TrainerNative

    images = len(_recipe(shapes_dir, tmp_path).train_dataset)
    steps = images  # batch 2: two epochs
    overrides = tiny_training_overrides(
        shapes_dir, tmp_path / "run", **{**DECODER_ONLY, "training.max_steps": steps}
    )
    summary = SAM3TrainerNative(None, overrides).train()
    note = summary["vision feature cache"]
    assert note.startswith("memory, ") and f"{images} misses" in note, note
    assert f"{steps * 2 - images} hits" in note, note
