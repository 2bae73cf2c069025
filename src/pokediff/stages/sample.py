"""`pokediff sample`: generate images with DDPM, DDIM or DPM-Solver++ from a trained model.

    pokediff sample --checkpoint outputs/train/model.safetensors --sampler ddim --steps 50 --out grid.png

Writes the individual PNGs (``--images-dir``, default: next to the grid in <grid stem>_images/ or
sample.out_dir/images), a grid, and beside it a denoising progression strip and the sample info, named
after the grid (see sample_files): two grids in one folder keep their own; a type-conditional model also
writes a per-type grid (type_grid.png) and labels.csv (each image's requested type). Those folders are
locked for the run (pokediff.locks): a second `pokediff sample` into them stops with one line. Every file
is written whole (pokediff.files); SIGTERM or Ctrl-C stops with one line saying how many images were
written. A type-conditional model samples the types asked for (--type, sample.types; all in turn by
default) with guidance --guidance (sample.guidance):

    pokediff sample --type water --guidance 2 --num-images 16 --out water.png
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

from pokediff.choices import AUTO_SPACING, PRECISIONS, SAMPLERS, SPACINGS
from pokediff.cli import add_common_arguments
from pokediff.config import load_params
from pokediff.errors import UsageError
from pokediff.files import write_atomic
from pokediff.locks import OutDirLock
from pokediff.pokemon_types import SAMPLE_LABELS_NAME
from pokediff.stopping import Stopped, signal_name

TYPE_GRID_NAME = "type_grid.png"  # beside grid.png: a row of samples per type


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="model.safetensors or checkpoints/last.pt "
                                          "(default: <train.out_dir>/model.safetensors)")
    src.add_argument("--model", help="MLflow model URI, e.g. models:/pokemon-ddpm@champion")
    parser.add_argument("--sampler", choices=SAMPLERS, help="(sample.sampler)")
    parser.add_argument("--steps", type=int, help="sampling steps (sample.steps; ddpm uses all T if omitted)")
    parser.add_argument("--eta", type=float, help="DDIM noise, 0 = deterministic (sample.eta)")
    parser.add_argument("--spacing", choices=(AUTO_SPACING, *SPACINGS))
    parser.add_argument("--num-images", type=int, help="how many images (sample.num_images)")
    parser.add_argument("--batch-size", type=int, help="images per forward pass (sample.batch_size)")
    parser.add_argument("--seed", type=int, help="(sample.seed)")
    parser.add_argument("--type", dest="types", action="append", metavar="TYPE",
                        help="type-conditional models: a Pokémon type, or two as fire/flying (repeatable; "
                             "sample.types; default: every type in turn)")
    parser.add_argument("--guidance", type=float,
                        help="classifier-free guidance scale w, 0 = plain conditional (sample.guidance)")
    parser.add_argument("--out", help="grid PNG path (default: <sample.out_dir>/grid.png)")
    parser.add_argument("--images-dir", help="folder for the individual PNGs")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="network precision: auto = bf16 autocast on CUDA, fp32 elsewhere (default: auto)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last weights and inputs")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the network (once per batch shape; pays off for many images)")


def run(args: argparse.Namespace) -> int:
    flags = {"sample.sampler": args.sampler, "sample.steps": args.steps, "sample.eta": args.eta,
             "sample.spacing": args.spacing, "sample.num_images": args.num_images,
             "sample.batch_size": args.batch_size, "sample.seed": args.seed, "sample.types": args.types,
             "sample.guidance": args.guidance}
    params = load_params(args.params, args.overrides, flags)
    out_dir = Path(params.sample.out_dir)
    grid_path = Path(args.out) if args.out else out_dir / "grid.png"
    if args.images_dir:
        images_dir = Path(args.images_dir)
    elif args.out:
        images_dir = grid_path.with_name(grid_path.stem + "_images")
    else:
        images_dir = out_dir / "images"

    # torch, the model and the samplers (seconds to import) only once the arguments and params are valid
    from pokediff.devices import resolve_device

    resolve_device(args.device, "--device")  # DeviceError: one line, exit 2, before anything is written
    # The model is read (and a hostile or wrong file refused) before any output folder is created.
    model, diffusion_cfg, source = _load_model(args, params)
    steps = _sampling_steps(args, params, diffusion_cfg.timesteps)
    # One writer per output folder: the grid's folder (grid, progression.png, sample_info.json) and the
    # images' folder when it lies elsewhere. Two runs into the same --out would interleave their images.
    with contextlib.ExitStack() as locks:
        for folder in _output_folders(grid_path, images_dir):
            locks.enter_context(OutDirLock(folder, "sample"))
        return _sample(args, params, model, diffusion_cfg, source, steps, grid_path, images_dir)


def _output_folders(grid_path: Path, images_dir: Path) -> list[Path]:
    grid_dir = grid_path.parent
    inside = images_dir.resolve().is_relative_to(grid_dir.resolve())
    return [grid_dir] if inside else [grid_dir, images_dir]


def _load_model(args: argparse.Namespace, params):
    """(model, its diffusion config, where it came from) for --checkpoint, --model or the trained model."""
    from pokediff.checkpoint import MODEL_FILE_NAME

    return load_for_sampling(
        checkpoint=args.checkpoint or str(Path(params.train.out_dir) / MODEL_FILE_NAME), model_uri=args.model,
        use_ema=params.sample.use_ema and not args.no_ema, device=args.device,
    )


def _sampling_steps(args: argparse.Namespace, params, timesteps: int) -> int | None:
    """The sampler's steps; None = all T. ddpm runs all T unless steps are asked for on the command line
    (--steps or -S sample.steps); a UsageError for more steps than the model has timesteps."""
    steps_given = args.steps is not None or any(o.split("=", 1)[0].strip() == "sample.steps" for o in args.overrides)
    steps = params.sample.steps if (steps_given or params.sample.sampler != "ddpm") else None
    if steps is not None and steps > timesteps:
        raise UsageError(f"--steps {steps} exceeds the model's {timesteps} timesteps (sample.steps)")
    return steps


def _sample(args: argparse.Namespace, params, model, diffusion_cfg, source: str, steps: int | None,
            grid_path: Path, images_dir: Path) -> int:
    from pokediff.generation import generate

    cfg = params.sample
    t0 = time.perf_counter()
    written = [0]

    def progress(done: int, total: int) -> None:  # one line per batch: visible in DVC/Prefect logs
        written[0] = done
        elapsed = time.perf_counter() - t0
        eta = elapsed / done * (total - done)
        print(f"sample: {done}/{total} images, {done / elapsed:.1f} img/s, ETA {eta:.0f} s", flush=True)

    strip_path, info_path = sample_files(grid_path)
    try:
        result = generate(model, diffusion_cfg, cfg, steps=steps, images_dir=images_dir, grid_path=grid_path,
                          strip_path=strip_path, type_grid_path=grid_path.with_name(TYPE_GRID_NAME),
                          on_batch=progress, precision=args.precision, channels_last=args.channels_last,
                          compile=args.compile)
    except Stopped as stop:  # each PNG is written whole (pokediff.files); say how far it got
        raise stop.explained(
            f"stopped by {signal_name(stop.signum)} after {written[0]} of {cfg.num_images} images (in {images_dir}/, "
            f"each one whole); no grid, {SAMPLE_LABELS_NAME} or {info_path.name} was written") from None
    seconds = time.perf_counter() - t0
    info = {"source": source, "sampler": cfg.sampler, "steps": result.steps, "eta": cfg.eta,
            "spacing": result.spacing, "num_images": cfg.num_images, "seed": cfg.seed,
            "conditional": result.labels is not None, "types": cfg.types, "guidance": cfg.guidance,
            "seconds": round(seconds, 2), "images_per_second": round(cfg.num_images / seconds, 3),
            "precision": args.precision, "channels_last": args.channels_last, "compile": args.compile}
    write_atomic(info_path, json.dumps(info, indent=2) + "\n")
    write_labels_csv(grid_path.parent / SAMPLE_LABELS_NAME, images_dir, result)
    conditioned = "" if result.labels is None else (
        f", types {', '.join(cfg.types) or 'all in turn'}, guidance {cfg.guidance:g}")
    print(f"pokediff sample: {cfg.num_images} images ({cfg.sampler}, {result.steps} steps{conditioned}) in "
          f"{seconds:.1f} s -> {images_dir}/, grid {grid_path}, denoising steps {strip_path}")
    return 0


def sample_files(grid: Path) -> tuple[Path, Path]:
    """(denoising strip, sample info) written beside ``grid``, named after it: grid.png -> progression.png
    and sample_info.json (the pipeline's names, declared in dvc.yaml), champion.png ->
    champion_progression.png and champion_info.json."""
    if grid.stem == "grid":
        return grid.with_name("progression.png"), grid.with_name("sample_info.json")
    return grid.with_name(f"{grid.stem}_progression.png"), grid.with_name(f"{grid.stem}_info.json")


def write_labels_csv(path: Path, images_dir: Path, result) -> None:
    """labels.csv beside sample_info.json: each image file and the type it was asked for (the score stage's
    per-type FID reads it); the header alone for an unconditional model."""
    lines = ["image,type"]
    if result.labels is not None:
        lines += [f"{Path(p).relative_to(images_dir).as_posix()},{label}"
                  for p, label in zip(result.paths, result.labels, strict=True)]
    write_atomic(path, "\n".join(lines) + "\n")


def load_for_sampling(checkpoint: str | None, model_uri: str | None, *, use_ema: bool = True,
                      device: str | None = None):
    """(model in eval mode on device, its diffusion config, a description of where it came from).

    model_uri (models:/NAME@ALIAS): the version's safetensors weights are downloaded into a temporary
    folder, loaded, and the folder removed. Otherwise ``checkpoint``: a model file (model.safetensors)
    or a training checkpoint (checkpoints/last.pt). Neither is unpickled (pokediff.checkpoint)."""
    # torch: seconds to import, not for `pokediff sample --help`
    from pokediff.checkpoint import load_model
    from pokediff.devices import resolve_device

    dev = resolve_device(device, "--device")  # DeviceError: one line, exit 2, before the model is read
    if model_uri:
        from pokediff.tracking.registry import download_model_file  # mlflow: seconds to import, only for --model

        with tempfile.TemporaryDirectory(prefix="pokediff-model-") as tmp:
            model, _, diffusion_cfg, step = load_model(download_model_file(model_uri, tmp), use_ema=use_ema, device=dev)
        return model, diffusion_cfg, f"{model_uri} (step {step})"
    model, _, diffusion_cfg, step = load_model(checkpoint, use_ema=use_ema, device=dev)
    return model, diffusion_cfg, f"{checkpoint} (step {step})"
