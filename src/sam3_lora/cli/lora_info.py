"""``sam3-lora lora-info``: where LoRA goes for a config, how big the adapter is, and with
``--memory`` the predicted peak training memory (no weights downloaded)."""

from __future__ import annotations

import argparse

from rich.console import Console

from sam3_lora.cli.common import add_config_arguments, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "lora-info",
        help="print adapted modules and trainable parameters per model component",
        description="Inject LoRA as the config says and print a table per component. "
        "--model sam3-size builds the released SAM3 architecture without weights. --memory "
        "predicts the peak training memory instead (hub ids need no download).",
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--list-modules", action="store_true", help="also list every adapted module"
    )
    memory = parser.add_argument_group("memory (--memory)")
    memory.add_argument("--memory", action="store_true", help="predict peak training memory")
    memory.add_argument("--resolution", type=int, help="input size (default: the model's)")
    memory.add_argument(
        "--prompts_per_image",
        type=int,
        help="prompts (SAM3) or objects (SAM2) per image; default: the config's most",
    )
    memory.add_argument(
        "--precision",
        choices=("bf16", "fp16", "fp32"),
        help="default: training.mixed_precision (auto = bf16, a GPU's)",
    )
    memory.add_argument(
        "--gpu_memory", help="the GPU's memory, e.g. 16GB: says what fits (default: this GPU's)"
    )
    memory.add_argument(
        "--gradient_checkpointing",
        action="store_true",
        help="sets training.gradient_checkpointing",
    )
    memory.add_argument(
        "--qlora", action="store_true", help="as with model.quantization: 4bit (NF4 base)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.memory:
        return run_memory(args)
    from sam3_lora.lora import (
        apply_lora_to_model,
        parameter_report,
        parameter_table,
        resolve_targets,
    )
    from sam3_lora.models import load_model

    config = config_from_args(args)
    loaded = load_model(config.model.name_or_path, config.model.family)
    targets = resolve_targets(loaded.model, config.lora, loaded.spec)
    model = apply_lora_to_model(loaded.model, config.lora)
    report = parameter_report(model, loaded.spec)
    console = Console()
    if args.list_modules:
        for component, names in targets.by_component().items():
            for name in names:
                console.print(f"{component:18s} {name}")
    title = (
        f"LoRA on {loaded.source}: rank {config.lora.rank}, alpha {config.lora.alpha:g}, "
        f"{', '.join(config.lora.components(loaded.spec.components))}"
    )
    console.print(parameter_table(report, title=title))
    if config.finetune.mode == "full":
        console.print(
            "finetune.mode is full: no LoRA is trained; `sam3-lora param-groups` prints the "
            "groups and learning rates of the run"
        )
    return 0


def local_gpu_memory() -> int | None:
    """This machine's first GPU's memory (the default of --gpu_memory), None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.get_device_properties(0).total_memory)


def run_memory(args: argparse.Namespace) -> int:
    """The memory table (checkpointing off / on), whether it fits, and what would."""
    from dataclasses import replace

    from sam3_lora.errors import ConfigError
    from sam3_lora.memory.build import memory_model
    from sam3_lora.memory.estimate import MemorySettings
    from sam3_lora.memory.report import (
        config_precision,
        default_prompts,
        fit_line,
        gib,
        memory_table,
        negatives,
        parse_gpu_memory,
        quantized,
        suggestions,
    )

    budget = parse_gpu_memory(args.gpu_memory) if args.gpu_memory else local_gpu_memory()
    for flag in ("resolution", "prompts_per_image"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag} {value}: must be at least 1")
    config = config_from_args(args)
    if args.gradient_checkpointing:
        config.training.gradient_checkpointing = True
    settings = MemorySettings(
        batch_size=config.training.batch_size,
        prompts_per_image=args.prompts_per_image or default_prompts(config),
        precision=args.precision or config_precision(config),
        gradient_checkpointing=config.training.gradient_checkpointing,
        qlora=args.qlora or quantized(config),
    )
    model, source = memory_model(config, args.resolution)
    columns = [replace(settings, gradient_checkpointing=on) for on in (False, True)]
    if not model.probe.checkpointing_supported:
        columns = columns[:1]
    estimates = [model.estimate(s) for s in columns]
    static = model.static(settings.qlora)
    mode = "full fine-tuning" if config.finetune.mode == "full" else f"LoRA r{config.lora.rank}"
    console = Console()
    batch = settings.describe().rsplit(", checkpointing", 1)[0]
    title = (
        f"Peak training memory of {source}: {mode} ({static.trainable_parameters / 1e6:.2f} M "
        f"trainable), {model.probe.resolution} px, {batch}"
    )
    console.print(memory_table(estimates, title))
    if not model.probe.checkpointing_supported:
        console.print("this task has no gradient checkpointing: one column")
    current = model.estimate(settings)
    cache_bytes = getattr(model.probe, "feature_cache_bytes_per_image", None)
    if config.training.cache_vision_features and cache_bytes is not None:
        per_image = cache_bytes(model.precision(settings.precision))
        console.print(
            f"vision-feature cache: {per_image / 2**20:.0f} MiB per training image in host "
            f"memory ({per_image * 1000 / 2**30:.0f} GiB per 1,000 images), not GPU memory; "
            "training.feature_cache_storage: disk keeps it on disk"
        )
    if budget is None:
        console.print(
            f"predicted peak {gib(current.total)} ({settings.describe()}); add --gpu_memory "
            "16GB to see what fits"
        )
        return 0
    for estimate in estimates:
        console.print(fit_line(estimate, budget))
    if current.total > budget:
        fixes = suggestions(
            model, settings, budget, config.finetune.mode == "lora", negatives(config)
        )
        if not fixes:
            console.print(f"nothing tried fits in {gib(budget)}: a smaller model or resolution")
        else:
            console.print(f"to fit in {gib(budget)}, set (smallest change first):")
            for fix in fixes:
                console.print(f"  {fix.change}: {gib(fix.estimate.total)}")
    return 0
