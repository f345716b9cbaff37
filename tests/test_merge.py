"""``merge``: a plain model folder that predicts exactly what the adapter on its base does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import Sam3Model

from sam3_lora.cli import main
from sam3_lora.errors import AdapterError
from sam3_lora.predict.inference import SAM3LoRAInference
from sam3_lora.predict.merge import merge_adapter
from tests.adapters import make_tiny_adapter


def test_merged_model_predicts_like_the_adapter(tmp_path: Path) -> None:
    adapter = make_tiny_adapter(tmp_path / "final")
    merged = tmp_path / "merged"
    assert main(["merge", "--adapter", str(adapter), "--output", str(merged)]) == 0
    for name in ("config.json", "model.safetensors", "processor_config.json"):
        assert (merged / name).is_file()
    assert isinstance(Sam3Model.from_pretrained(merged), Sam3Model)

    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (80, 100, 3), np.uint8))
    prompts = {"text": ["circle", "star"], "threshold": 0.0}
    with_adapter = SAM3LoRAInference(weights_path=adapter).predict(image, **prompts)
    base = SAM3LoRAInference(model="tiny-random").predict(image, **prompts)
    merged_model = SAM3LoRAInference(weights_path=merged)
    assert merged_model.loaded.kind == "merged"
    from_merged = merged_model.predict(image, **prompts)
    np.testing.assert_allclose(from_merged["scores"], with_adapter["scores"], atol=1e-4)
    np.testing.assert_allclose(from_merged["boxes"], with_adapter["boxes"], atol=1e-2)
    assert (from_merged["masks"] != with_adapter["masks"]).mean() < 1e-3
    assert np.abs(base["boxes"] - with_adapter["boxes"]).max() > 0.1  # the adapter matters

    with pytest.raises(AdapterError, match="already a merged model"):
        merge_adapter(merged, tmp_path / "again")
    with pytest.raises(AdapterError, match="is the adapter folder"):
        merge_adapter(adapter, adapter)
