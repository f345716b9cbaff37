"""Run by ``torchrun`` from ``tests/test_fsdp_cpu.py``: one full-mode step of the tiny SAM3 under
torch's FSDP2 on CPU (gloo), sharded as Accelerate's FSDP2 path does on GPUs
(``configs/accelerate/fsdp.yaml``: one unit per ViT / DETR layer, the task module as root, AdamW
over the sharded parameters). Accelerate itself never selects FSDP on CPU.

Rank 0 also runs the same step unsharded on both ranks' batches (gradients averaged, as FSDP
reduces them) and writes the largest gradient difference to ``argv[2]``. Then the trainer's FSDP
save path: the full state dict gathered as ``accelerator.get_state_dict`` does under FSDP2, written
by rank 0 with ``task.save_weights(folder, state_dict=...)`` into ``argv[3]`` and read back with
``Sam3Model.from_pretrained``: it must equal the sharded parameters. (Gradients, not the
updated weights: Adam's first step turns the rounding noise of gradients that are zero in exact
arithmetic, such as attention key biases', into updates of size lr.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard
from transformers import Sam3Model

from sam3_lora.config import load_config
from sam3_lora.models import load_sam3
from sam3_lora.tasks.concept.checkpointing import CHECKPOINTED_LAYERS
from sam3_lora.tasks.concept.recipe import build_concept_datasets, build_concept_task


def build(shapes_dir: Path):
    overrides = {
        "model.name_or_path": "tiny-random",
        "data.train": str(shapes_dir / "train"),
        "data.augment": False,
        "data.num_negative_prompts": 1,
        "finetune.mode": "full",
        "finetune.lr_scale": 10.0,
        "training.gradient_checkpointing": True,
    }
    config = load_config(None, overrides)
    task = build_concept_task(config, load_sam3("tiny-random"))
    train, _ = build_concept_datasets(config, 224)
    for module in task.model.modules():  # the DETR dropouts: the same step on every process
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    task.model.train()
    return task, train


def step(task, batches: list) -> dict[str, torch.Tensor]:
    """Forward, backward and an AdamW step over the task's groups; the (full) gradients."""
    optimizer = torch.optim.AdamW(task.parameter_groups())
    for batch in batches:
        loss = task.loss(task.model(batch), batch, num_targets=1.0)["loss"] / len(batches)
        loss.backward()
    gradients = {}
    for name, parameter in task.network.named_parameters():
        gradient = parameter.grad  # None: unused in this batch (the box-exemplar encoder)
        if gradient is not None:
            gradients[name] = (
                gradient.full_tensor() if hasattr(gradient, "full_tensor") else gradient
            )
    optimizer.step()
    return gradients


def main() -> None:
    shapes_dir, result = Path(sys.argv[1]), Path(sys.argv[2])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    task, train = build(shapes_dir)
    batches = [task.collate([train[2 * r], train[2 * r + 1]]) for r in range(world)]
    for module in list(task.network.modules()):
        if isinstance(module, CHECKPOINTED_LAYERS):
            fully_shard(module)
    fully_shard(task.model)  # the root: its forward is the only entry point
    sharded = step(task, [batches[rank]])
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, cpu_offload=True)
    gathered = get_model_state_dict(task.model, options=options)  # every rank, as Accelerate
    updated = {n: p.full_tensor().detach() for n, p in task.network.named_parameters()}
    saved = {}
    if rank == 0:
        task.save_weights(Path(sys.argv[3]), state_dict=gathered)
        loaded = dict(Sam3Model.from_pretrained(sys.argv[3]).named_parameters())
        saved["saved_parameters"] = len(loaded) == len(updated)
        saved["saved_max_difference"] = max(
            (loaded[n].detach() - value).abs().max().item() for n, value in updated.items()
        )
    if rank == 0:
        reference, _ = build(shapes_dir)
        expected = step(reference, batches)
        difference = max((g - expected[k]).abs().max().item() for k, g in sharded.items())
        scale = max(g.abs().max().item() for g in expected.values())
        found = {"max_difference": difference, "max_gradient": scale}
        found["same_parameters"] = sorted(sharded) == sorted(expected)
        found["gradients"] = len(expected)
        found.update(saved)
        result.write_text(json.dumps(found))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
