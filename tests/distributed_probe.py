"""Run under torchrun by tests/test_distributed.py: rank 1 alone sees a non-finite loss."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accelerate import Accelerator

from sam3_lora.config import load_config
from sam3_lora.engine.trainer import Trainer
from tests.toy_task import ToyDataset, ToyTask, toy_overrides

config = load_config(None, toy_overrides(Path(sys.argv[1])))
trainer = Trainer(config, ToyTask(), ToyDataset(8, seed=1), None)
trainer.accelerator = Accelerator()
rank = trainer.accelerator.process_index
loss = torch.tensor(float("nan") if rank == 1 else 1.0)
finite = trainer._finite_everywhere(loss)
line = f"rank {rank} of {trainer.accelerator.num_processes}: finite everywhere = {finite}"
# One file per process: two processes printing to one pipe can interleave their lines.
(Path(sys.argv[1]) / f"finite-{rank}.txt").write_text(line)
trainer.accelerator.end_training()  # the process group ends here, not in the interpreter's exit
