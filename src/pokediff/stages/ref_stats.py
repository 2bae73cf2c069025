"""`pokediff ref-stats`: Inception reference statistics of the training images, for FID/KID.

    pokediff ref-stats --data outputs/dataset --out outputs/ref_stats/ref_stats.npz

Reads the dataset's manifest.csv (or every PNG/JPEG below --data), optionally a fixed-seed subset of
score.ref_max_images images, and saves mu, sigma, features and nearest-neighbour distances as .npz.
If the output already holds the stats of the same pixels, Inception is not run again (--force does).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pokediff.cli import add_common_arguments, add_inception_arguments
from pokediff.config import load_params
from pokediff.locks import OutDirLock
from pokediff.stopping import Stopped, signal_name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--data", help="dataset folder or any image folder (default: data.out_dir)")
    parser.add_argument("--out", help="stats file to write (default: score.ref_stats)")
    parser.add_argument("--max-images", type=int, help="random subset size, 0 = all (score.ref_max_images)")
    parser.add_argument("--force", action="store_true", help="recompute even if --out is up to date")
    add_inception_arguments(parser)


def run(args: argparse.Namespace) -> int:
    flags = {"score.ref_max_images": args.max_images, "score.batch_size": args.batch_size,
             "score.device": args.device}
    params = load_params(args.params, args.overrides, flags)
    cfg = params.score
    data = Path(args.data or params.data.out_dir)
    out = Path(args.out or cfg.ref_stats)

    from pokediff.devices import resolve_device
    from pokediff.evaluation.reference import compute_reference_stats  # torch, Inception: seconds to import

    resolve_device(cfg.device, "--device" if args.device else "score.device")  # DeviceError: exit 2, before any work

    start = time.perf_counter()
    try:
        with OutDirLock(out.parent, "ref-stats"):  # one writer per folder
            stats = compute_reference_stats(
                data, out, max_images=cfg.ref_max_images, seed=cfg.seed, batch_size=cfg.batch_size,
                device=cfg.device, force=args.force, progress=not args.quiet,
            )
    except (FileNotFoundError, ValueError) as exc:
        print(f"pokediff ref-stats: {exc}", file=sys.stderr)
        return 1
    except Stopped as stop:  # the stats file is written whole (temporary file, then renamed)
        raise stop.explained(f"stopped by {signal_name(stop.signum)}; {out} was not written "
                             "(what was there before is unchanged)") from None
    print(
        f"ref-stats: {stats.n} images from {data} -> {out} ({stats.extractor}, "
        f"pixels sha256 {stats.content_hash[:12]}, {time.perf_counter() - start:.1f} s)"
    )
    return 0
