"""SAM2 prediction, evaluation and merge: Python predictor, ``predict``, ``evaluate``, ``merge``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Sam2Model, Sam2Processor

from sam3_lora.cli import main
from sam3_lora.config import load_config
from sam3_lora.errors import PromptError
from sam3_lora.evaluation.promptable import evaluate_promptable_from_config
from sam3_lora.lora import apply_lora_to_model, save_lora_weights
from sam3_lora.models import load_model
from sam3_lora.predict.merge import merge_adapter
from sam3_lora.predict.promptable import SAM2LoRAInference
from sam3_lora.predict.weights import detect_family

REPO = Path(__file__).resolve().parents[1]
SAM2_LORA = REPO / "configs" / "sam2_lora.yaml"
BOX = [20, 30, 90, 100]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter on the tiny random SAM2 whose B matrices are not zero (it changes the
    masks), saved as training saves it, without a run folder around it."""
    folder = tmp_path_factory.mktemp("adapter")
    config = load_config(SAM2_LORA, {"model.name_or_path": "tiny-random"})
    loaded = load_model("tiny-random", "sam2")
    model = apply_lora_to_model(loaded.model, config.lora)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
    save_lora_weights(model, folder)
    return folder


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 60, (120, 160, 3), dtype=np.uint8)
    pixels[30:100, 20:90] = 220
    path = tmp_path_factory.mktemp("image") / "plate.png"
    Image.fromarray(pixels).save(path)
    return path


def test_predictor_matches_transformers_and_checks_prompts(adapter: Path, image: Path) -> None:
    assert detect_family(adapter) == "sam2"  # from the adapter's recorded model class
    base = SAM2LoRAInference(model="tiny-random", family="sam2", device="cpu")
    with torch.no_grad():  # random mask logits are ~1e-5: make them decisive (x 1e4)
        for mlp in base.model.mask_decoder.output_hypernetworks_mlps:
            mlp.proj_out.weight.mul_(1e4)
    predictions = base.predict(image, boxes=[BOX])
    assert predictions["masks"].shape == (1, 120, 160) and predictions["labels"] == ["object 1"]
    # transformers' own pipeline: processor, model, post_process_masks, best predicted IoU
    processor: Sam2Processor = base.loaded.processor
    pil = Image.open(image).convert("RGB")
    inputs = processor(images=pil, input_boxes=[[BOX]], return_tensors="pt")
    with torch.no_grad():
        outputs = base.model(
            pixel_values=inputs["pixel_values"],
            input_boxes=inputs["input_boxes"],
            multimask_output=False,
        )
    masks = processor.post_process_masks(outputs.pred_masks, inputs["original_sizes"])[0][0]
    agree = (masks[0].numpy() == predictions["masks"][0]).mean()
    assert agree > 0.999, agree
    assert np.isclose(predictions["scores"][0], outputs.iou_scores[0, 0, 0].item(), atol=1e-5)

    tuned = SAM2LoRAInference(weights_path=adapter, device="cpu")
    assert tuned.has_adapter and tuned.family == "sam2"
    both = tuned.predict(image, boxes=[BOX, [0, 0, 40, 40]], points=[[[50, 60, 1]], [[5, 5, 0]]])
    assert both["masks"].shape == (2, 120, 160)
    assert not np.array_equal(tuned.predict(image, boxes=[BOX])["masks"], predictions["masks"])
    clicks = tuned.predict(image, points=[[50, 60, 1], [5, 5, 0]])
    assert len(clicks["masks"]) == 1 and clicks["prompts"][0]["points"] == [[50, 60, 1], [5, 5, 0]]
    with pytest.raises(PromptError, match=r"does not lie inside the 160x120 image"):
        tuned.predict(image, boxes=[[10, 10, 200, 50]])
    with pytest.raises(PromptError, match="has label 2; a point label is 1 .* or 0"):
        tuned.predict(image, points=[[50, 60, 2]])
    with pytest.raises(PromptError, match="2 boxes and 3 point lists"):
        tuned.predict(image, boxes=[BOX, BOX], points=[[[1, 1, 1]], [[2, 2, 1]], [[3, 3, 1]]])


def test_predict_cli_writes_overlay_and_json(
    adapter: Path, image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.png"
    arguments = ["predict", "--adapter", str(adapter), "--image", str(image), "--output", str(out)]
    assert main([*arguments, "--bboxes", json.dumps([BOX]), "--points", "[[50,60,1]]"]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert Image.open(out).size == (160, 120)
    (entry,) = record["objects"]
    assert entry["prompt"] == {"box": BOX, "points": [[50, 60, 1]]}
    assert set(entry) >= {"score", "object_score", "box", "area", "mask"}
    assert entry["mask"]["size"] == [120, 160]
    capsys.readouterr()
    for extra, message in (
        (["--points", "[[50,60,3]]"], "has label 3"),
        (["--bboxes", "[[10,10,400,50]]"], "does not lie inside the 160x120 image"),
        (["--text_prompt", "scratch"], "--text_prompt is a SAM3 prompt"),
    ):
        assert main([*arguments, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_merge_gives_a_plain_sam2_folder_that_predicts_as_the_adapter(
    adapter: Path, image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    merged = tmp_path / "merged"
    assert main(["merge", "--adapter", str(adapter), "--output", str(merged)]) == 0
    assert "sam2" in capsys.readouterr().out
    plain = Sam2Model.from_pretrained(merged)
    assert type(plain) is Sam2Model and Sam2Processor.from_pretrained(merged) is not None
    prompts = {"boxes": [BOX, [100, 10, 150, 60]], "points": [[[50, 60, 1]], [[120, 30, 1]]]}
    expected = SAM2LoRAInference(weights_path=adapter, device="cpu").predict(image, **prompts)
    folder = SAM2LoRAInference(weights_path=merged, device="cpu")
    assert folder.loaded.kind == "merged" and not folder.has_adapter
    got = folder.predict(image, **prompts)
    assert (got["masks"] == expected["masks"]).mean() > 0.999
    assert np.allclose(got["scores"], expected["scores"], atol=1e-4)
    with pytest.raises(Exception, match="already a merged model"):
        merge_adapter(merged, tmp_path / "again")


def test_evaluate_compares_base_and_adapter(adapter: Path, tmp_path: Path) -> None:
    steel = {"output_dir": str(tmp_path / "steel"), "style": "steel", "num_train": 2, "num_val": 4}
    config = load_config(
        SAM2_LORA,
        {
            "model.name_or_path": "tiny-random",
            "data.train": None,
            "data.valid": None,
            "data.synthetic": steel,
            "output.output_dir": str(tmp_path / "run"),
        },
    )
    metrics = evaluate_promptable_from_config(config, adapter, compare_base=True, gallery_size=2)
    assert set(metrics["models"]) == {"base", "adapter"}
    overall = metrics["models"]["adapter"]["overall"]
    for key in ("miou", "dice", "boundary_f1", "point_miou", "points3_miou", "points3_dice"):
        assert 0.0 <= overall[key] <= 1.0, key
        assert key in metrics["difference"]
    assert set(metrics["models"]["base"]["per_category"]) == {"scratch", "blob"}
    output = Path(metrics["output_dir"])
    page = (output / "report.html").read_text()
    assert "Worst images first" in page and page.count("data:image/png;base64") == 2
    rows = list(csv.DictReader((output / "instances.csv").open()))
    assert len(rows) == 2 * overall["instances"] and {r["model"] for r in rows} == {
        "base",
        "adapter",
    }
    assert json.loads((output / "metrics.json").read_text())["task"] == "promptable"


def test_evaluate_cli_for_sam2(
    adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    steel = f"{{output_dir: {tmp_path / 'steel'}, style: steel, num_train: 2, num_val: 2}}"
    arguments = [
        "evaluate",
        "--config",
        str(SAM2_LORA),
        "--model",
        "tiny-random",
        "--adapter",
        str(adapter),
        "--compare-base",
        "--output_dir",
        str(tmp_path / "eval"),
        "--set",
        "data.train=null",
        "--set",
        "data.valid=null",
        "--set",
        f"data.synthetic={steel}",
    ]
    assert main(arguments) == 0
    out = capsys.readouterr().out
    assert "points3_miou" in out and "adapter − base" in out
    assert (tmp_path / "eval" / "report.html").is_file()
    assert main([*arguments, "--threshold", "0.4"]) == 2
    assert "--threshold is a SAM3 option" in capsys.readouterr().err


def test_adapter_switched_off_and_merged_in_memory(adapter: Path, image: Path) -> None:
    base = SAM2LoRAInference(model="tiny-random", family="sam2", device="cpu").predict(
        image, boxes=[BOX]
    )
    tuned = SAM2LoRAInference(weights_path=adapter, device="cpu")
    expected = tuned.predict(image, boxes=[BOX])
    with tuned.adapter_disabled():
        off = tuned.predict(image, boxes=[BOX])
    np.testing.assert_allclose(off["scores"], base["scores"], atol=1e-5)
    assert (expected["masks"] != base["masks"]).mean() > 0.01  # the adapter matters
    assert tuned.merge_adapter() and not tuned.has_adapter
    assert tuned.loaded.kind == "adapter (merged in memory)"
    merged = tuned.predict(image, boxes=[BOX])
    assert (merged["masks"] == expected["masks"]).mean() > 0.999
    np.testing.assert_allclose(merged["scores"], expected["scores"], atol=1e-4)
    assert not tuned.merge_adapter()  # nothing left to merge
    with pytest.raises(Exception, match="no adapter is loaded"):
        tuned.adapter_disabled().__enter__()
