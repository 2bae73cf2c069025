"""`pokediff ref-stats`: Inception reference statistics of the training images, for FID/KID.

    pokediff ref-stats --data outputs/dataset --out outputs/ref_stats/ref_stats.npz

Reads the dataset's manifest.csv (or every PNG/JPEG below --data), optionally a fixed-seed subset of
score.ref_max_images images, and saves mu, sigma, features and nearest-neighbour distances as .npz.
If the output already holds the stats of the same pixels, Inception is not run again (--force does).

    pokediff ref-stats --per-type      # score.ref_stats_types/<type>.npz + index.json

--per-type writes one stats file per Pokémon type (the images having it, at most score.ref_max_per_type)
for the per-type FID of a type-conditional model; with model.condition none it writes an empty index
and runs nothing (the pipeline's ref_stats_types stage costs nothing for an unconditional model).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pokediff.cli import add_common_arguments, add_inception_arguments
from pokediff.config import load_params
from pokediff.files import write_atomic
from pokediff.locks import OutDirLock
from pokediff.stopping import Stopped, signal_name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--data", help="dataset folder or any image folder (default: data.out_dir)")
    parser.add_argument("--out", help="stats file to write (default: score.ref_stats)")
    parser.add_argument("--max-images", type=int, help="random subset size, 0 = all (score.ref_max_images)")
    parser.add_argument("--force", action="store_true", help="recompute even if --out is up to date")
    parser.add_argument("--per-type", action="store_true",
                        help="one stats file per Pokémon type into --out (default: score.ref_stats_types)")
    add_inception_arguments(parser)


def run(args: argparse.Namespace) -> int:
    flags = {"score.ref_max_images": args.max_images, "score.batch_size": args.batch_size,
             "score.device": args.device}
    params = load_params(args.params, args.overrides, flags)
    cfg = params.score
    data = Path(args.data or params.data.out_dir)
    if args.per_type:
        return _per_type(args, params, data, Path(args.out or cfg.ref_stats_types))
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


def _per_type(args: argparse.Namespace, params, data: Path, out: Path) -> int:
    from pokediff.evaluation.type_reference import INDEX_NAME, compute_type_reference_stats

    if params.model.condition == "none":
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / INDEX_NAME, "{}\n")
        print(f"ref-stats --per-type: model.condition is none, nothing to compute -> {out / INDEX_NAME} (empty)")
        return 0
    cfg = params.score
    start = time.perf_counter()
    try:
        index = compute_type_reference_stats(data, out, max_per_type=cfg.ref_max_per_type, seed=cfg.seed,
                                             batch_size=cfg.batch_size, device=cfg.device, progress=not args.quiet)
    except (FileNotFoundError, ValueError) as exc:
        print(f"pokediff ref-stats: {exc}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{name} {entry['n']}" for name, entry in index.items())
    print(f"ref-stats --per-type: {len(index)} types ({counts}) -> {out} ({time.perf_counter() - start:.1f} s)")
    return 0
