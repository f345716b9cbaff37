"""``sam3-lora predict``: overlays, JSON and COCO auto-labels from text and/or box prompts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sam3_lora.errors import Sam3LoraError

console = Console(highlight=False)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="predict on an image or a folder: overlay PNG + JSON per image, COCO auto-labels",
        description="Prompt SAM3 (+ adapter) with text, box exemplars, or both; or SAM2 / SAM3's "
        "tracker (model.family sam2 / sam3_tracker) with object boxes and clicks. Writes an "
        "overlay PNG and a JSON (boxes, scores, labels, RLE masks) per image; --save_coco writes "
        "all predictions as one COCO dataset to correct in CVAT / Label Studio.",
    )
    parser.add_argument(
        "--adapter",
        "--weights",
        dest="adapter",
        help="adapter folder, its adapter_model.safetensors, or a merged model folder",
    )
    parser.add_argument("--config", help="training config (base model and thresholds)")
    parser.add_argument("--model", help="base model: hub id, folder, tiny, tiny-random")
    parser.add_argument("--image", required=True, type=Path, help="an image file or a folder")
    parser.add_argument(
        "--text_prompt",
        "--prompt",
        "--text",
        dest="text_prompt",
        action="append",
        help="a concept to find, e.g. 'scratch' (repeatable)",
    )
    parser.add_argument(
        "--bboxes",
        help="boxes '[[x1,y1,x2,y2], ...]' in pixels: SAM3 exemplars; SAM2: one object each",
    )
    parser.add_argument(
        "--points",
        help="SAM2 / SAM3 tracker clicks '[[x,y,label], ...]' (label 1 object, 0 background) "
        "for one object, or '[[[x,y,label], ...], ...]' one list per object (per box)",
    )
    parser.add_argument(
        "--family",
        choices=("sam3", "sam2", "sam3_tracker"),
        help="model family (default: the config's, else found from the weights)",
    )
    parser.add_argument("--negative_bboxes", help="boxes of what not to find, same format")
    parser.add_argument(
        "--threshold",
        type=float,
        help="score threshold (default: the config's evaluation.score_threshold, else 0.5)",
    )
    parser.add_argument(
        "--mask_threshold",
        type=float,
        help="mask threshold (default: the config's evaluation.mask_threshold, else 0.5)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("predictions"),
        help="out.png for one image, or a folder (default: predictions/)",
    )
    parser.add_argument("--save_coco", type=Path, help="also write all predictions as COCO JSON")
    parser.add_argument(
        "--coco_segmentation",
        choices=("rle", "polygon"),
        default="rle",
        help="segmentation format of --save_coco (polygon: easiest to edit by hand)",
    )
    parser.add_argument(
        "--nms_iou_threshold",
        type=float,
        help="drop a detection whose mask overlaps a better one of its prompt above this IoU "
        "(default: the config's evaluation.nms_iou_threshold, else off)",
    )
    parser.add_argument(
        "--batch_size",
        type=int,
        help="images per forward (default: the config's evaluation.batch_size, else 4)",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.set_defaults(func=run)


def _boxes(text: str | None, flag: str) -> list[list[float]] | None:
    from sam3_lora.predict.inference import PromptError

    if text is None:
        return None
    try:
        boxes = json.loads(text)
    except json.JSONDecodeError as error:
        raise PromptError(
            f"{flag} {text!r} is not JSON ({error.msg}); e.g. '[[10,20,80,90]]'"
        ) from None
    if isinstance(boxes, list) and boxes and all(isinstance(v, int | float) for v in boxes):
        boxes = [boxes]  # one box given without the outer list
    if not isinstance(boxes, list):
        raise PromptError(f"{flag} must be a list of [x1, y1, x2, y2] boxes")
    return boxes


def _family(args: argparse.Namespace) -> str:
    from sam3_lora.config import load_config
    from sam3_lora.predict.weights import detect_family

    if args.family:
        return args.family
    if args.config:
        return load_config(args.config).model.family
    return detect_family(args.adapter, args.model)


def run(args: argparse.Namespace) -> int:
    from sam3_lora.errors import PromptError
    from sam3_lora.predict.autolabel import predict_to_files
    from sam3_lora.predict.inference import SAM3LoRAInference, build_prompts
    from sam3_lora.tasks import get_spec

    if args.adapter is None and args.model is None and args.config is None:
        raise Sam3LoraError("give --adapter / --weights, or a base model with --model or --config")
    family = _family(args)
    if get_spec(family).task == "promptable":
        return _run_promptable(args, family)
    if args.points is not None:
        raise PromptError(
            f"--points are SAM2 / SAM3-tracker clicks; {family} takes --text_prompt and --bboxes "
            "exemplars (or pass --family sam2)"
        )
    prompts = build_prompts(
        args.text_prompt,
        _boxes(args.bboxes, "--bboxes"),
        _boxes(args.negative_bboxes, "--negative_bboxes"),
    )
    inferencer = SAM3LoRAInference(
        args.config,
        weights_path=args.adapter,
        model=args.model,
        device=args.device,
        threshold=args.threshold,
        mask_threshold=args.mask_threshold,
        batch_size=args.batch_size,
        nms_iou_threshold=args.nms_iou_threshold,
    )
    result = predict_to_files(
        inferencer,
        args.image,
        args.output,
        prompts,
        save_coco=args.save_coco,
        segmentation=args.coco_segmentation,
    )
    nms = inferencer.nms_iou_threshold
    table = Table(
        title=f"predictions (threshold {inferencer.threshold}"
        + (f", mask NMS at IoU {nms})" if nms is not None else ")")
    )
    table.add_column("label")
    table.add_column("instances", justify="right")
    for prompt in dict.fromkeys(p.label for p in prompts):
        table.add_row(prompt, str(result.per_label.get(prompt, 0)))
    table.add_section()
    table.add_row(f"{result.images} images", str(result.instances), style="bold")
    console.print(table)
    return _report_files(result, args.output)


def _run_promptable(args: argparse.Namespace, family: str) -> int:
    from sam3_lora.errors import PromptError
    from sam3_lora.predict.promptable import SAM2LoRAInference, predict_to_files
    from sam3_lora.tasks.promptable.predictor import build_object_prompts, parse_prompt_json

    for flag, value in (
        ("--text_prompt", args.text_prompt),
        ("--negative_bboxes", args.negative_bboxes),
    ):
        if value:
            raise PromptError(f"{flag} is a SAM3 prompt; {family} takes --bboxes and --points")
    prompts = build_object_prompts(
        parse_prompt_json(args.bboxes, "--bboxes"), parse_prompt_json(args.points, "--points")
    )
    inferencer = SAM2LoRAInference(
        args.config,
        weights_path=args.adapter,
        model=args.model,
        family=family,
        device=args.device,
        mask_threshold=args.mask_threshold,
    )
    result = predict_to_files(
        inferencer,
        args.image,
        args.output,
        prompts,
        save_coco=args.save_coco,
        segmentation=args.coco_segmentation,
    )
    table = Table(title=f"{family} predictions (mask threshold {inferencer.mask_threshold})")
    table.add_column("object")
    table.add_column("prompt")
    for k, prompt in enumerate(prompts):
        table.add_row(f"object {k + 1}", json.dumps(prompt.as_dict()))
    table.add_section()
    table.add_row(f"{result.images} images", f"{result.instances} masks", style="bold")
    console.print(table)
    return _report_files(result, args.output)


def _report_files(result: Any, output: str) -> int:
    """Print where the overlays, JSON and COCO file went and the images that could not be read;
    the exit code (1 when no image could be read)."""
    if len(result.outputs) == 1:
        png, json_file = result.outputs[0]
        console.print(f"[green]overlay[/green] {png}  [green]json[/green] {json_file}")
    elif result.outputs:
        console.print(f"[green]overlays and JSON[/green] written to {output}")
    if result.coco_file is not None:
        console.print(f"[green]COCO dataset[/green] {result.coco_file}")
    if result.failures:
        console.print(f"[red]{len(result.failures)} image(s) could not be read:[/red]")
        for path, message in result.failures:
            console.print(f"  {path}: {message}", soft_wrap=True)
    return 1 if result.failures and not result.images else 0
