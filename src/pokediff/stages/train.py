"""`pokediff train`: train the U-Net on an image folder or an ingested dataset.

    pokediff train --data outputs/dataset --steps 200 -S train.batch_size=16
    pokediff train --resume            # continue a killed run from its last checkpoint

Reads the model, diffusion and train sections of params.yaml; flags override them.
Writes <out_dir>/checkpoints/last.pt, <out_dir>/model.pt, train_log.csv and train_metrics.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pokediff.cli import add_common_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--data", help="ingested dataset or any image folder (default: data.out_dir)")
    parser.add_argument("--out-dir", help="where checkpoints and logs go (default: train.out_dir)")
    parser.add_argument("--steps", type=int, help="total optimizer steps (train.steps)")
    parser.add_argument("--batch-size", type=int, help="global batch size (train.batch_size)")
    parser.add_argument("--lr", type=float, help="peak learning rate (train.lr)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from <out-dir>/checkpoints/last.pt if it exists")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from pokediff.config import load_params

    flag_overrides = {
        "train.steps": args.steps, "train.batch_size": args.batch_size, "train.lr": args.lr,
        "train.out_dir": args.out_dir,
    }
    overrides = list(args.overrides) + [f"{k}={v}" for k, v in flag_overrides.items() if v is not None]
    params = load_params(args.params, overrides)  # validated before any work

    import torch

    from pokediff.data import load_training_images
    from pokediff.models import UNet, count_parameters
    from pokediff.training import train

    data_dir = Path(args.data or params.data.out_dir)
    images = load_training_images(data_dir, params.model.resolution)
    out_dir = Path(params.train.out_dir)
    n_params = count_parameters(UNet(params.model))
    print(f"pokediff train: {images.shape[0]} images from {data_dir}, U-Net {n_params / 1e6:.2f} M params, "
          f"{params.train.steps} steps x batch {params.train.batch_size}")

    result = train(images, params.model, params.diffusion, params.train, out_dir,
                   resume=args.resume, device=args.device, progress=not args.no_progress)
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return 0
    metrics = {
        "steps": result.step,
        "final_loss": result.losses[-1] if result.losses else None,
        "images_per_second": result.images_per_second,
        "seconds": round(result.seconds, 2),
        "parameters": n_params,
        "dataset_images": int(images.shape[0]),
    }
    (out_dir / "train_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"pokediff train: {result.step} steps in {result.seconds:.1f} s; model -> {result.model_file}")
    return 0
