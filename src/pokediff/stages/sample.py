"""`pokediff sample`: generate images with DDPM, DDIM or DPM-Solver++ from a trained model.

    pokediff sample --checkpoint outputs/train/model.safetensors --sampler ddim --steps 50 --out grid.png

Writes the individual PNGs (``--images-dir``, default: next to the grid in <grid stem>_images/ or
sample.out_dir/images), a grid, a denoising progression strip and sample_info.json. Those folders are
locked for the run (pokediff.locks): a second `pokediff sample` into them stops with one line. Every
file is written whole (pokediff.files); SIGTERM or Ctrl-C stops with one line saying how many images
were written.
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
from pokediff.stopping import Stopped, signal_name


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
             "sample.batch_size": args.batch_size, "sample.seed": args.seed}
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
    # One writer per output folder: the grid's folder (grid, progression.png, sample_info.json) and the
    # images' folder when it lies elsewhere. Two runs into the same --out would interleave their images.
    with contextlib.ExitStack() as locks:
        for folder in _output_folders(grid_path, images_dir):
            locks.enter_context(OutDirLock(folder, "sample"))
        return _sample(args, params, grid_path, images_dir)


def _output_folders(grid_path: Path, images_dir: Path) -> list[Path]:
    grid_dir = grid_path.parent
    inside = images_dir.resolve().is_relative_to(grid_dir.resolve())
    return [grid_dir] if inside else [grid_dir, images_dir]


def _sample(args: argparse.Namespace, params, grid_path: Path, images_dir: Path) -> int:
    from pokediff.checkpoint import MODEL_FILE_NAME
    from pokediff.generation import generate

    cfg = params.sample
    model, diffusion_cfg, source = load_for_sampling(
        checkpoint=args.checkpoint or str(Path(params.train.out_dir) / MODEL_FILE_NAME), model_uri=args.model,
        use_ema=cfg.use_ema and not args.no_ema, device=args.device,
    )
    # ddpm runs all T steps unless steps are asked for on the command line: --steps or -S sample.steps.
    steps_given = args.steps is not None or any(o.split("=", 1)[0].strip() == "sample.steps" for o in args.overrides)
    steps = cfg.steps if (steps_given or cfg.sampler != "ddpm") else None
    if steps is not None and steps > diffusion_cfg.timesteps:
        raise UsageError(f"--steps {steps} exceeds the model's {diffusion_cfg.timesteps} timesteps (sample.steps)")
    t0 = time.perf_counter()
    written = [0]

    def progress(done: int, total: int) -> None:  # one line per batch: visible in DVC/Prefect logs
        written[0] = done
        elapsed = time.perf_counter() - t0
        eta = elapsed / done * (total - done)
        print(f"sample: {done}/{total} images, {done / elapsed:.1f} img/s, ETA {eta:.0f} s", flush=True)

    try:
        result = generate(model, diffusion_cfg, cfg, steps=steps, images_dir=images_dir, grid_path=grid_path,
                          strip_path=grid_path.with_name("progression.png"), on_batch=progress,
                          precision=args.precision, channels_last=args.channels_last, compile=args.compile)
    except Stopped as stop:  # each PNG is written whole (pokediff.files); say how far it got
        raise stop.explained(
            f"stopped by {signal_name(stop.signum)} after {written[0]} of {cfg.num_images} images (in {images_dir}/, "
            f"each one whole); no grid or sample_info.json was written") from None
    seconds = time.perf_counter() - t0
    info = {"source": source, "sampler": cfg.sampler, "steps": result.steps, "eta": cfg.eta,
            "spacing": result.spacing, "num_images": cfg.num_images, "seed": cfg.seed,
            "seconds": round(seconds, 2), "images_per_second": round(cfg.num_images / seconds, 3),
            "precision": args.precision, "channels_last": args.channels_last, "compile": args.compile}
    write_atomic(grid_path.parent / "sample_info.json", json.dumps(info, indent=2) + "\n")
    print(f"pokediff sample: {cfg.num_images} images ({cfg.sampler}, {result.steps} steps) in {seconds:.1f} s "
          f"-> {images_dir}/, grid {grid_path}")
    return 0


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
