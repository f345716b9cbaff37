"""``sam3-lora data <format>``: the converters into COCO and their summary table."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

console = Console(highlight=False)


def register_converters(commands: argparse._SubParsersAction) -> None:
    """Add one ``data`` subcommand per input format."""
    coco = commands.add_parser("coco", help="import a COCO file (ids re-indexed)")
    coco.add_argument("--coco_json", type=Path, required=True)
    coco.add_argument("--images_dir", type=Path, help="default: the JSON's folder")
    _output_args(coco)
    coco.add_argument("--rle", action="store_true", help="store every mask as RLE")
    coco.add_argument(
        "--skip_bad_images",
        action="store_true",
        help="leave out missing / unreadable images instead of stopping",
    )
    coco.set_defaults(func=_coco)

    yolo = commands.add_parser("yolo", help="YOLO segmentation or box labels")
    yolo.add_argument("--yolo_dir", type=Path, required=True)
    names = yolo.add_mutually_exclusive_group()
    names.add_argument("--classes", help='comma-separated names, e.g. "person,car,dog"')
    names.add_argument("--data_yaml", type=Path, help="Ultralytics data.yaml with 'names'")
    _output_args(
        yolo,
        split_default=None,
        split_help="default: keep train/valid/test sub-folders, else train",
    )
    yolo.set_defaults(func=_yolo)

    per_image = commands.add_parser("json", help="SAM3-LoRA per-image JSON (bboxes + masks)")
    per_image.add_argument("--input_dir", type=Path, required=True)
    per_image.add_argument("--class_name", default="object", help="class of unlabelled objects")
    _output_args(per_image)
    per_image.set_defaults(func=_per_image_json)

    labelme = commands.add_parser("labelme", help="LabelMe JSON files")
    labelme.add_argument("--input_dir", type=Path, required=True)
    _output_args(labelme)
    labelme.set_defaults(func=_labelme)

    via = commands.add_parser("via", help="VGG Image Annotator JSON")
    via.add_argument("--via_json", type=Path, required=True)
    via.add_argument("--images_dir", type=Path, help="default: the JSON's folder")
    via.add_argument("--class_attribute", help="region attribute holding the class")
    via.add_argument("--class_name", default="object", help="class of regions without one")
    via.add_argument("--skip_missing", action="store_true")
    _output_args(via)
    via.set_defaults(func=_via)

    masks = commands.add_parser("masks", help="mask PNGs or a Severstal run-length CSV")
    masks.add_argument("--images_dir", type=Path, required=True)
    source = masks.add_mutually_exclusive_group(required=True)
    source.add_argument("--masks_dir", type=Path, help="mask PNGs named like the images")
    source.add_argument("--rle_csv", type=Path, help="ImageId,ClassId,EncodedPixels CSV")
    masks.add_argument("--mask_type", choices=("binary", "semantic", "instance"), default="binary")
    masks.add_argument("--classes", help="comma-separated names, index = pixel value")
    masks.add_argument(
        "--class_names",
        type=Path,
        help="names file (class_names.txt, labels.txt or CVAT labelmap.txt)",
    )
    masks.add_argument(
        "--class_masks_dir", type=Path, help="semantic masks for --mask_type instance"
    )
    masks.add_argument("--class_name", default="object", help="class for binary masks")
    masks.add_argument("--background", type=int, default=0, help="background pixel value")
    masks.add_argument(
        "--ignore_value",
        type=int,
        help="pixels of no object (default: 255 for semantic / instance masks, none for binary)",
    )
    _min_area_arg(masks)
    masks.add_argument(
        "--mask_threshold",
        type=int,
        default=128,
        help="gray level that binarises lossy (JPEG / soft-edged) binary masks",
    )
    masks.add_argument(
        "--colour_tolerance",
        type=float,
        default=32.0,
        help="RGB distance within which a mask colour snaps to the label map",
    )
    masks.add_argument("--skip_missing", action="store_true")
    _output_args(masks)
    masks.set_defaults(func=_masks)

    studio = commands.add_parser("labelstudio", help="Label Studio JSON or JSON-MIN export")
    studio.add_argument("--input", type=Path, required=True, help="the exported JSON file")
    studio.add_argument("--images_dir", type=Path, help="default: the JSON's folder")
    studio.add_argument("--class_name", default="object", help="class of unlabelled regions")
    studio.add_argument(
        "--mask_threshold", type=int, default=128, help="alpha from which a brush pixel is object"
    )
    studio.add_argument("--skip_missing", action="store_true", help="leave out missing images")
    _output_args(studio)
    studio.set_defaults(func=_labelstudio)

    cvat = commands.add_parser("cvat", help="CVAT for images 1.1 XML (task or project export)")
    cvat.add_argument("--input", type=Path, required=True, help="annotations.xml")
    cvat.add_argument("--images_dir", type=Path, help="default: images/ beside the XML")
    cvat.add_argument("--subset", help="only this subset of a project export (e.g. Train)")
    cvat.add_argument("--skip_missing", action="store_true", help="leave out missing images")
    _output_args(cvat, split_default=None, split_help="default: each subset's own, else train")
    cvat.set_defaults(func=_cvat)

    voc = commands.add_parser("voc", help="Pascal VOC segmentation (Segmentation* PNGs)")
    voc.add_argument("--voc_dir", type=Path, required=True, help="VOC folder or one above it")
    voc.add_argument("--classes", help="comma-separated names, index = pixel value")
    voc.add_argument(
        "--image_set",
        help="ImageSets/Segmentation/<name>.txt (default: the split's list if any; 'all')",
    )
    voc.add_argument("--boxes", action="store_true", help="add images that have boxes only")
    _min_area_arg(voc)
    _output_args(voc)
    voc.set_defaults(func=_voc)

    hf = commands.add_parser(
        "hf", help="a Hugging Face dataset (hub, save_to_disk folder, Roboflow zips)"
    )
    hf.add_argument("--dataset", required=True, help="hub name or save_to_disk folder")
    hf.add_argument("--split", help="one split only (default: all)")
    hf.add_argument("--output_dir", type=Path, required=True)
    hf.add_argument("--image_column", default="image")
    hf.add_argument("--objects_column", default="objects")
    hf.add_argument("--bbox_format", choices=("xywh", "xyxy"), default="xywh")
    hf.add_argument("--cache_dir", type=Path, help="hub cache (default: huggingface_hub's)")
    hf.add_argument(
        "--offline", action="store_true", help="use the hub cache only (as HF_HUB_OFFLINE=1)"
    )
    hf.set_defaults(func=_hf)


def _output_args(
    parser: argparse.ArgumentParser, split_default: str | None = "train", split_help: str = ""
) -> None:
    parser.add_argument("--output_dir", type=Path, required=True, help="dataset folder")
    parser.add_argument("--split", default=split_default, help=split_help or "train/valid/test")
    parser.add_argument(
        "--link",
        action="store_true",
        help="hard-link images instead of copying (copies across filesystems)",
    )


def _min_area_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--min_area",
        type=int,
        help="smallest object part kept, in pixels (default: 10, more above 0.5 Mpx)",
    )


def _image_mode(args: argparse.Namespace) -> str:
    return "link" if getattr(args, "link", False) else "copy"


def _coco(args: argparse.Namespace) -> int:
    from sam3_lora.data.convert.coco import import_coco

    result = import_coco(
        args.coco_json,
        args.images_dir,
        args.output_dir,
        args.split,
        mask_format="rle" if args.rle else "keep",
        image_mode=_image_mode(args),
        skip_bad_images=args.skip_bad_images,
    )
    return print_conversions([result])


def _yolo(args: argparse.Namespace) -> int:
    from sam3_lora.data.convert.yolo import convert_yolo

    results = convert_yolo(
        args.yolo_dir,
        args.output_dir,
        args.split,
        classes=args.classes,
        data_yaml=args.data_yaml,
        image_mode=_image_mode(args),
    )
    return print_conversions(results)


def _per_image_json(args: argparse.Namespace) -> int:
    from sam3_lora.data.convert.per_image_json import convert_per_image_json

    result = convert_per_image_json(
        args.input_dir,
        args.output_dir,
        args.split,
        class_name=args.class_name,
        image_mode=_image_mode(args),
    )
    return print_conversions([result])


def _labelme(args: argparse.Namespace) -> int:
    from sam3_lora.data.convert.labelme import convert_labelme

    result = convert_labelme(
        args.input_dir, args.output_dir, args.split, image_mode=_image_mode(args)
    )
    return print_conversions([result])


def _via(args: argparse.Namespace) -> int:
    from sam3_lora.data.convert.via import convert_via

    result = convert_via(
        args.via_json,
        args.images_dir,
        args.output_dir,
        args.split,
        class_attribute=args.class_attribute,
        class_name=args.class_name,
        image_mode=_image_mode(args),
        skip_missing=args.skip_missing,
    )
    return print_conversions([result])


def _masks(args: argparse.Namespace) -> int:
    from sam3_lora.data.convert import masks

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    colours = None
    if args.class_names is not None:
        classes, colours = masks.load_class_names(args.class_names)
    if args.rle_csv is not None:
        result = masks.convert_rle_csv(
            args.rle_csv,
            args.images_dir,
            args.output_dir,
            args.split,
            classes=classes,
            min_area=args.min_area,
            skip_missing=args.skip_missing,
            image_mode=_image_mode(args),
        )
    else:
        result = masks.convert_masks(
            args.images_dir,
            args.masks_dir,
            args.output_dir,
            args.split,
            mask_type=args.mask_type,
            classes=classes,
            colours=colours,
            class_masks_dir=args.class_masks_dir,
            class_name=args.class_name,
            background=args.background,
            ignore_value="auto" if args.ignore_value is None else args.ignore_value,
            min_area=args.min_area,
            threshold=args.mask_threshold,
            tolerance=args.colour_tolerance,
            image_mode=_image_mode(args),
        )
    return print_conversions([result])


def _labelstudio(args: argparse.Namespace) -> int:
    from sam3_lora.data.convert.labelstudio import convert_labelstudio

    result = convert_labelstudio(
        args.input,
        args.images_dir,
        args.output_dir,
        args.split,
        class_name=args.class_name,
        mask_threshold=args.mask_threshold,
        skip_missing=args.skip_missing,
        image_mode=_image_mode(args),
    )
    return print_conversions([result])


def _cvat(args: argparse.Namespace) -> int:
    from sam3_lora.data.convert.cvat import convert_cvat

    results = convert_cvat(
        args.input,
        args.images_dir,
        args.output_dir,
        args.split,
        subset=args.subset,
        skip_missing=args.skip_missing,
        image_mode=_image_mode(args),
    )
    return print_conversions(results)


def _voc(args: argparse.Namespace) -> int:
    from sam3_lora.data.convert.voc import convert_voc

    result = convert_voc(
        args.voc_dir,
        args.output_dir,
        args.split,
        classes=[c.strip() for c in args.classes.split(",")] if args.classes else None,
        image_set=args.image_set,
        boxes=args.boxes,
        min_area=args.min_area,
        image_mode=_image_mode(args),
    )
    return print_conversions([result])


def _hf(args: argparse.Namespace) -> int:
    from sam3_lora.data.convert.hf import convert_hf

    results = convert_hf(
        args.dataset,
        args.output_dir,
        args.split,
        image_column=args.image_column,
        objects_column=args.objects_column,
        bbox_format=args.bbox_format,
        cache_dir=args.cache_dir,
        local_files_only=True if args.offline else None,
    )
    return print_conversions(results)


def print_conversions(results: Sequence, title: str = "converted") -> int:
    from sam3_lora.data.summary import conversion_table

    for result in results:
        console.print(f"wrote {result.annotation_file}", soft_wrap=True, markup=False)
    console.print(conversion_table(results, title))
    return 0
