"""`pokediff fid DIR_A DIR_B`: FID (and with --kid, KID) between any two image folders.

    pokediff fid outputs/samples/images outputs/dataset --kid --out fid.json

Each folder is read like ref-stats reads one (manifest.csv or every PNG/JPEG below it); images of
any size are fine (each is resized to 299x299 the standard way). Nothing is cached.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pokediff.cli import add_common_arguments, add_inception_arguments
from pokediff.config import load_params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("dir_a", metavar="DIR_A", help="first image folder")
    parser.add_argument("dir_b", metavar="DIR_B", help="second image folder")
    parser.add_argument("--kid", action="store_true", help="also compute KID (mean and std over subsets)")
    parser.add_argument("--out", help="also write the numbers to this JSON file")
    parser.add_argument("--max-images", type=int, default=0,
                        help="fixed-seed random subset of each folder, 0 = all (default: %(default)s)")
    parser.add_argument("--resize", choices=["tf1", "antialias"], default="tf1",
                        help="tf1 = the original FID's resize (default); antialias = torchmetrics' default")
    add_inception_arguments(parser)


def run(args: argparse.Namespace) -> int:
    flags = {"score.batch_size": args.batch_size, "score.device": args.device}
    params = load_params(args.params, args.overrides, flags)
    cfg = params.score
    if args.max_images < 0:
        print("pokediff fid: --max-images must be >= 0", file=sys.stderr)
        return 2

    # torch and Inception (seconds to import) only once the arguments and params are valid
    from pokediff.data.image_folder import load_image_folder
    from pokediff.devices import resolve_device
    from pokediff.evaluation.frechet import fid_from_features
    from pokediff.evaluation.inception import extract_features, get_extractor
    from pokediff.evaluation.kid import kernel_inception_distance
    from pokediff.evaluation.report import write_metrics_json

    resolve_device(cfg.device, "--device" if args.device else "score.device")  # DeviceError: exit 2, before any work
    try:
        extractor = get_extractor(args.resize, cfg.device)
        feats = []
        for folder in (args.dir_a, args.dir_b):
            images, _ = load_image_folder(folder, resolution=None, on_error="raise", max_images=args.max_images,
                                          seed=cfg.seed)
            if len(images) < 2:
                raise ValueError(f"{folder}: FID needs at least 2 images, found {len(images)}")
            feats.append(extract_features(images, cfg.batch_size, extractor=extractor, progress=not args.quiet))
    except (FileNotFoundError, ValueError) as exc:
        print(f"pokediff fid: {exc}", file=sys.stderr)
        return 1
    a, b = feats
    metrics: dict[str, float | int | str] = {
        "fid": fid_from_features(a, b), "num_a": len(a), "num_b": len(b), "extractor": extractor.id,
    }
    if args.kid:
        subset = min(cfg.kid_subset_size, len(a), len(b))
        metrics["kid_mean"], metrics["kid_std"] = kernel_inception_distance(
            a, b, subsets=cfg.kid_subsets, subset_size=subset, seed=cfg.seed
        )
        metrics["kid_subset_size"] = subset
    print(json.dumps(metrics, indent=2))
    if args.out:
        write_metrics_json(metrics, Path(args.out))
    return 0
