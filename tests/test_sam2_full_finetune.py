"""Full fine-tuning of SAM2 (``configs/sam2_full_ft.yaml``): Meta's SAM2.1 optimizer groups, the
``param-groups`` table, and a short training run that saves, loads and resumes model folders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import Sam2Model

from sam3_lora.cli import main
from sam3_lora.config import load_config
from sam3_lora.models import load_model
from sam3_lora.tasks.promptable.recipe import build_promptable_task
from sam3_lora.tasks.promptable.tiny import tiny_sam2_dir

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "configs" / "sam2_full_ft.yaml"


def expected_lr_and_decay(name: str, blocks: int) -> tuple[float, float]:
    """Meta's SAM2.1 rule written out from its config, independently of the implementation."""
    lr = 5e-6
    if name.startswith("vision_encoder."):
        lr = 3e-6
        block = re.match(r"vision_encoder\.backbone\.blocks\.(\d+)\.", name)
        if block:
            lr *= 0.9 ** (blocks - int(block.group(1)))
        elif name.startswith("vision_encoder.backbone.patch_embed."):
            lr *= 0.9 ** (blocks + 1)
    return lr, 0.1


@pytest.fixture(scope="module")
def groups_and_model() -> tuple[list[dict], torch.nn.Module]:
    config = load_config(PRESET, {"model.name_or_path": "tiny-random"})
    task = build_promptable_task(config, load_model("tiny-random", "sam2"))
    return task.parameter_groups(), task.network


def test_every_group_has_metas_learning_rate_and_weight_decay(
    groups_and_model: tuple[list[dict], torch.nn.Module],
) -> None:
    groups, network = groups_and_model
    blocks = len(network.vision_encoder.backbone.blocks)
    names = {id(p): n for n, p in network.named_parameters()}
    norms = {
        f"{module_name}.{leaf}"
        for module_name, module in network.named_modules()
        if isinstance(module, torch.nn.LayerNorm)
        and module.__dict__.get("data_format") != ("channels_first")
        for leaf, _ in module.named_parameters(recurse=False)
    }
    grouped = [names[id(p)] for group in groups for p in group["params"]]
    assert sorted(grouped) == sorted(names.values())  # every weight trained, once
    for group in groups:
        name = names[id(group["params"][0])]  # one parameter of each group
        lr, weight_decay = expected_lr_and_decay(name, blocks)
        if name.endswith("bias") or name in norms:
            weight_decay = 0.0
        assert group["lr"] == pytest.approx(lr, rel=1e-9), (group["name"], name)
        assert group["weight_decay"] == weight_decay, (group["name"], name)
    by_name = {group["name"]: group for group in groups}
    assert by_name[f"image_encoder.layer{blocks}"]["lr"] == pytest.approx(3e-6 * 0.9)
    assert by_name["image_encoder.layer0"]["lr"] == pytest.approx(3e-6 * 0.9 ** (blocks + 1))
    assert by_name["image_encoder"]["lr"] == 3e-6  # position embeddings and the neck: no decay
    assert by_name["mask_decoder"]["lr"] == 5e-6 and by_name["mask_decoder.no_wd"]["lr"] == 5e-6


def test_param_groups_command_on_the_large_architecture(capsys: pytest.CaptureFixture) -> None:
    arguments = ["param-groups", "--config", str(PRESET), "--model", "sam2.1-large-size"]
    assert main(arguments) == 0
    out = capsys.readouterr().out
    assert "full fine-tuning on sam2.1-large-size" in out
    # Hiera-large has 48 blocks: the last gets 3e-6 x 0.9, the patch embedding 3e-6 x 0.9^49.
    assert re.search(r"image_encoder\.layer48\s+│.*2\.700e-06 │ 0\.1", out)
    assert re.search(rf"image_encoder\.layer0\s+│.*{3e-6 * 0.9**49:.3e} │ 0\.1", out)
    assert re.search(r"prompt_encoder\s+│.*5\.000e-06 │ 0\.1", out)
    assert "trained: 216,924,865" in out


def _train(tmp_path: Path, output: str, *extra: str) -> Path:
    steel = (
        f"{{output_dir: {tmp_path / 'steel'}, style: steel, num_train: 4, num_val: 2, "
        "image_size: 128}"
    )
    settings = {
        "data.train": "null",
        "data.valid": "null",
        "data.synthetic": steel,
        "finetune.lr_scale": "100",  # the tiny model moves visibly in 4 steps
        "training.batch_size": "2",
        "training.max_steps": "4",
        "training.save_steps": "2",
        "training.eval_steps": "2",
        "training.eval_at_start": "false",
        "training.num_workers": "0",
        "loss.correction_rounds": "1",
        "output.tensorboard": "false",
        "output.output_dir": str(tmp_path / output),
    }
    sets = [item for key, value in settings.items() for item in ("--set", f"{key}={value}")]
    arguments = ["train", "--config", str(PRESET), "--model", "tiny", *sets, *extra]
    assert main(arguments) == 0
    return tmp_path / output


def test_short_full_run_saves_model_folders_and_resumes(tmp_path: Path) -> None:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = _train(tmp_path, "run")
        checkpoint = run / "checkpoints" / "step-2"
        resumed = _train(tmp_path, "resumed", "--resume", str(checkpoint))
    finally:
        torch.set_num_threads(previous)
    summary = json.loads((run / "training_summary.json").read_text())
    assert summary["steps"] == 4 and "val/miou" in summary["final_metrics"]
    for folder in ("final", "best", "checkpoints/step-2", "checkpoints/step-4"):
        assert (run / folder / "model.safetensors").is_file(), folder
    model = Sam2Model.from_pretrained(run / "final")  # a plain model folder
    base = Sam2Model.from_pretrained(tiny_sam2_dir())
    trained = dict(model.named_parameters())
    changed = [n for n, p in base.named_parameters() if not torch.equal(p, trained[n])]
    assert any(n.startswith("vision_encoder.") for n in changed)
    assert any(n.startswith("mask_decoder.") for n in changed)
    straight = load_file(run / "final" / "model.safetensors")
    again = load_file(resumed / "final" / "model.safetensors")
    assert straight.keys() == again.keys()
    assert all(torch.equal(straight[k], again[k]) for k in straight)
