"""The memory report of ``lora-info --memory``, its suggestions, and the out-of-memory advice."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace

from rich.table import Table

from sam3_lora.config import Config
from sam3_lora.errors import ConfigError
from sam3_lora.memory.estimate import GIB, MemoryEstimate, MemoryModel, MemorySettings

logger = logging.getLogger(__name__)

_UNITS = {"": GIB, "g": GIB, "gb": GIB, "gib": GIB, "m": 1024**2, "mb": 1024**2, "mib": 1024**2}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_gpu_memory(text: str) -> int:
    """``16GB`` / ``16 GiB`` / ``80`` / ``24000MB`` -> bytes. GB means GiB (a "16 GB" card
    holds 16 GiB)."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS or float(match.group(1)) <= 0:
        raise ConfigError(
            f"--gpu_memory {text!r}: give the GPU's memory as a number with GB or MB, "
            "e.g. --gpu_memory 16GB"
        )
    return int(float(match.group(1)) * _UNITS[unit])


def default_prompts(config: Config) -> int:
    """The most prompts an image brings in a step: SAM3 its concepts (at most
    ``data.max_prompts_per_image``) plus the negatives; the promptable task its objects."""
    if config.model.family == "sam3":
        return config.data.max_prompts_per_image + config.data.num_negative_prompts
    return config.data.max_prompts_per_image


def negatives(config: Config) -> int:
    """Prompts per image outside ``data.max_prompts_per_image`` (SAM3's negatives)."""
    return config.data.num_negative_prompts if config.model.family == "sam3" else 0


def quantized(config: Config) -> bool:
    """Whether the config loads the base in 4 bits (``model.quantization: 4bit``, QLoRA)."""
    return getattr(config.model, "quantization", "none") == "4bit"


def config_precision(config: Config) -> str:
    """``training.mixed_precision`` as the GPU run would use it (auto -> bf16)."""
    setting = config.training.mixed_precision
    return {"auto": "bf16", "no": "fp32"}.get(setting, setting)


def gib(size: float) -> str:
    """Bytes as GiB (MiB below 1 GiB)."""
    if abs(size) < GIB:
        return f"{size / 1024**2:.0f} MiB"
    return f"{size / GIB:.2f} GiB"


@dataclass(frozen=True)
class Suggestion:
    """A change of settings and its predicted peak."""

    change: str
    estimate: MemoryEstimate
    settings_changed: int = 1


def suggestions(
    model: MemoryModel,
    settings: MemorySettings,
    budget: int,
    lora: bool,
    negatives: int = 0,
    limit: int = 5,
) -> list[Suggestion]:
    """Changes that bring the peak under ``budget``, fewest changed settings first: gradient
    checkpointing, batch 1, fewer prompts per image, QLoRA (LoRA mode), and their mixes.
    ``negatives``: prompts per image that are not ``data.max_prompts_per_image``'s (SAM3's
    ``data.num_negative_prompts``)."""
    moves: list[tuple[str, dict]] = []
    if model.probe.checkpointing_supported and not settings.gradient_checkpointing:
        moves.append(("gradient_checkpointing: true", {"gradient_checkpointing": True}))
    if settings.batch_size > 1:
        moves.append(("batch_size: 1", {"batch_size": 1}))
    if lora and not settings.qlora:
        moves.append(("model.quantization: 4bit", {"qlora": True}))
    combos: list[tuple[list[str], dict]] = [([], {})]
    for label, change in moves:
        combos += [([*labels, label], {**changes, **change}) for labels, changes in combos]
    found: list[Suggestion] = []
    for labels, changes in sorted(combos, key=lambda c: len(c[0])):
        candidate = replace(settings, **changes)
        estimate = model.estimate(candidate)
        if estimate.total <= budget and labels:
            found.append(Suggestion(", ".join(labels), estimate, len(labels)))
            continue
        prompts = _most_prompts(model, candidate, budget)
        if prompts is not None and prompts - negatives >= 1:
            cap = f"max_prompts_per_image: {prompts - negatives}"
            fewer = model.estimate(replace(candidate, prompts_per_image=prompts))
            found.append(Suggestion(", ".join([*labels, cap]), fewer, len(labels) + 1))
    unique = {s.change: s for s in found}
    return sorted(unique.values(), key=lambda s: s.settings_changed)[:limit]


def _most_prompts(model: MemoryModel, settings: MemorySettings, budget: int) -> int | None:
    for prompts in range(settings.prompts_per_image - 1, 0, -1):
        if model.estimate(replace(settings, prompts_per_image=prompts)).total <= budget:
            return prompts
    return None


def memory_table(estimates: list[MemoryEstimate], title: str) -> Table:
    """Parts of the peak, one column per estimate (checkpointing off / on)."""
    table = Table(title=title, title_justify="left")
    table.add_column("part")
    for estimate in estimates:
        on = estimate.settings.gradient_checkpointing
        table.add_column(f"checkpointing {'on' if on else 'off'}", justify="right")
    rows = [
        ("weights (fp32 / frozen bf16, NF4)", "weights"),
        ("gradients (fp32)", "gradients"),
        ("AdamW states (2 x fp32)", "optimizer"),
        ("autocast weight copies", "weight_copies"),
        ("activations per image", "per_image"),
        ("  of which per prompt", "per_prompt"),
        ("activations (this batch)", "activations"),
        ("backward workspace", "workspace"),
    ]
    for label, name in rows:
        table.add_row(label, *(gib(getattr(e, name)) for e in estimates))
    table.add_section()
    table.add_row("predicted peak", *(gib(e.total) for e in estimates), style="bold")
    return table


def fit_line(estimate: MemoryEstimate, budget: int) -> str:
    state = "fits" if estimate.total <= budget else "does not fit"
    on = "on" if estimate.settings.gradient_checkpointing else "off"
    return f"checkpointing {on}: {gib(estimate.total)} {state} in {gib(budget)}"


def oom_advice(config: Config, gpu_memory: int | None = None) -> str:
    """One paragraph for a CUDA out-of-memory stop: the estimate of the run's settings and the
    settings that would make it fit (never raises: a generic list when estimating fails)."""
    generic = (
        "lower training.batch_size or data.max_prompts_per_image, turn on "
        "training.gradient_checkpointing, lower data.resolution, or use QLoRA "
        "(model.quantization: 4bit); "
        "`sam3-lora lora-info --config <config> --memory --gpu_memory <GB>` predicts each"
    )
    try:
        from sam3_lora.memory.build import memory_model

        model, _ = memory_model(config)
        settings = MemorySettings(
            batch_size=config.training.batch_size,
            prompts_per_image=default_prompts(config),
            precision=config_precision(config),
            gradient_checkpointing=config.training.gradient_checkpointing,
            qlora=quantized(config),
        )
        estimate = model.estimate(settings)
        text = f"predicted peak {gib(estimate.total)} for {settings.describe()}"
        if gpu_memory:
            fixes = suggestions(
                model, settings, gpu_memory, config.finetune.mode == "lora", negatives(config)
            )
            if fixes:
                changes = "; ".join(f"{s.change} ({gib(s.estimate.total)})" for s in fixes[:3])
                return f"{text}; to fit in {gib(gpu_memory)}: {changes}"
        return f"{text}; {generic}"
    except Exception as error:  # the advice must not hide the out-of-memory stop
        logger.debug("memory estimate failed: %s", error)
        return generic
