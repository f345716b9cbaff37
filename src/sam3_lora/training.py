"""Training from a config: the family's task and datasets, then the engine's trainer.

``SAM3TrainerNative("configs/balanced.yaml").train()`` is the Python face of
``sam3-lora train --config configs/balanced.yaml``.
"""

from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console

from sam3_lora.config import Config, load_config
from sam3_lora.engine.layout import LayoutPlan, format_learning_rate, latest_final
from sam3_lora.engine.trainer import Trainer
from sam3_lora.errors import CheckpointError
from sam3_lora.lora import parameter_report, parameter_table
from sam3_lora.memory.report import oom_advice
from sam3_lora.models import load_model
from sam3_lora.tasks.spec import TaskRecipe

logger = logging.getLogger(__name__)


def build_recipe(config: Config) -> TaskRecipe:
    """Load the base model of ``model.family`` and build its task and datasets."""
    loaded = load_model(
        config.model.name_or_path, config.model.family, quantization=config.model.quantization
    )
    return loaded.spec.build_recipe(config, loaded)


def layout_plan(config: Config) -> LayoutPlan:
    """The output layout of ``config``: ``output.layout``, or for ``auto`` the family's
    (``sam2_lora`` for LoRA runs of the promptable families, ``standard`` otherwise); the run
    name ``{family}_{size}_lora_r{rank}_a{alpha}_lr{lr}`` from the config."""
    from sam3_lora.tasks import get_spec

    spec = get_spec(config.model.family)
    kind = spec.output_layout(config)
    if kind == "standard":
        return LayoutPlan()
    name = config.model.name_or_path
    size = spec.model_size(name) if spec.model_size else Path(name.rstrip("/")).name
    lora = config.lora
    run_name = (
        f"{config.model.family}_{size}_lora_r{lora.rank}_a{lora.alpha:g}_"
        f"lr{format_learning_rate(config.training.learning_rate)}"
    )
    return LayoutPlan(kind, run_name, spec.best_metrics)


def final_weights(config: Config) -> Path:
    """What ``--eval-only`` evaluates: ``output_dir/final``, or the newest run folder's
    ``final_lora_step*`` (layout ``sam2_lora``)."""
    plan = layout_plan(config)
    output_dir = Path(config.output.output_dir)
    found = latest_final(plan, output_dir)
    if found is not None:
        return found
    if plan.kind == "standard":
        return output_dir / "final"  # evaluation names the missing folder
    raise CheckpointError(
        f"--eval-only: no {plan.run_name}_<timestamp>/final_lora_step* in {output_dir}; train "
        "first, or pass --adapter"
    )


def is_main_process() -> bool:
    """Rank 0 of a launch (``RANK`` from torchrun / accelerate), or a single process.

    Read from the environment: creating Accelerate's state here would set up the process group
    before the trainer can give it its timeout.
    """
    return int(os.environ.get("RANK", "0") or 0) == 0


class SAM3TrainerNative:
    """Train an adapter as a config says (the SAM3-LoRA name; every family trains through it).

    Args:
        config: a YAML path, a preset name, or a :class:`Config`.
        overrides: dotted keys -> values applied on top of the file.
    """

    def __init__(self, config: str | Path | Config, overrides: dict[str, Any] | None = None):
        self.config = config if isinstance(config, Config) else load_config(config, overrides)
        self.console = Console()

    def train(self, resume: str | Path | bool | None = None) -> dict[str, Any]:
        """Train; ``resume=True`` continues from the latest checkpoint, a path from that one."""
        config = self.config
        main = is_main_process()  # one process prints and writes
        recipe = build_recipe(config)
        report = parameter_report(recipe.task.model)
        source = config.model.name_or_path
        if main:
            kind = "LoRA" if config.finetune.mode == "lora" else "Full fine-tuning"
            self.console.print(parameter_table(report, title=f"{kind} on {source}"))
            self.console.print(recipe.description)
        trainer = Trainer(
            config,
            recipe.task,
            recipe.train_dataset,
            recipe.valid_dataset,
            memory_advice=partial(oom_advice, config),
            layout=layout_plan(config),
            config_text=config.to_yaml(),
        )
        summary = trainer.train(resume=resume)
        if main:
            self.console.print(trainer.summary_table)
            if trainer.comparison_table is not None:
                self.console.print(trainer.comparison_table)
        self.trainer = trainer
        return summary
