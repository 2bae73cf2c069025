"""FID at the main job's CPU budget: ours against denoising-diffusion-pytorch, same images, same scorer.

    python -m benchmarks.cpu_quality                          # both, ~40 min on an idle 2-core CPU
    python -m benchmarks.cpu_quality --only ours --json out.json

Both train for the main job's budget (600 steps x batch 16 on the ingested sprites, 64x64), sample 300
images with DDIM-25 from their EMA weights and are scored by `pokediff score` against `pokediff
ref-stats` of 300 training images (the main job's evaluation: configs/cpu-small.yaml).

    ours          `pokediff train --overlay configs/cpu-small.yaml` (1.63 M-parameter U-Net, v-prediction,
                  min-SNR, cosine schedule, AdamW lr 1e-3, EMA 0.995), in-training FID off; `pokediff sample`
    ddpm-pytorch  denoising-diffusion-pytorch's Trainer with its defaults (Adam lr 1e-4 betas (0.9, 0.99),
                  EMA 0.995 every 10 steps, grad clip 1, hflip, fp32, its DataLoader) on
                  GaussianDiffusion's defaults (1000 steps, sigmoid schedule, v-prediction) with
                  Unet(dim=28, dim_mults=(1, 2, 2, 2)): 1.55 M parameters, the closest to ours (its
                  default multipliers (1, 2, 4, 8) give 2.44 M already at dim 16). The one change:
                  sampling_timesteps=25, its DDIM path, so both sample with 25 network calls (its
                  default would be 1000-step ancestral sampling, 40x the cost).

Reported: parameters, train seconds and images/s (the training call only, data loading included as
each runs it), sampling seconds, FID and KID, and the load average around each phase (the machine may
be shared: compare the two rows of one run). Outputs under --work (default outputs/cpu_quality).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "configs" / "cpu-small.yaml"
DDPM_DIM, DDPM_MULTS = 28, (1, 2, 2, 2)


def _pokediff(*args: str, env: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pokediff", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def score(samples: Path, ref: Path, out: Path, env: dict) -> dict:
    _pokediff("score", "--overlay", str(SMALL), "--samples", str(samples), "--ref", str(ref), "--out", str(out),
              "--no-track", "--quiet", env=env)
    return json.loads(out.read_text())


def run_ours(args: argparse.Namespace, work: Path, env: dict) -> dict:
    out = work / "ours"
    common = ["--overlay", str(SMALL), "-S", f"train.steps={args.steps}", "-S", f"train.batch_size={args.batch_size}"]
    load = {"train_before": _load()}
    _pokediff("train", "--data", args.data, "--out-dir", str(out / "train"), "--no-track", "--no-progress",
              "-S", "train.eval_every=0", *common, env=env)
    load["train_after"] = _load()
    metrics = json.loads((out / "train" / "train_metrics.json").read_text())
    _pokediff("sample", *common, "--checkpoint", str(out / "train" / "model.safetensors"),
              "--num-images", str(args.num_samples), "--images-dir", str(out / "samples"),
              "--out", str(out / "grid.png"), env=env)
    info = json.loads((out / "sample_info.json").read_text())
    load["sample_after"] = _load()
    return {"model": "ours", "params": metrics["parameters"], "train_seconds": metrics["seconds"],
            "sample_seconds": info["seconds"], "samples": str(out / "samples"), "load": load}


def run_ddpm_pytorch(args: argparse.Namespace, work: Path, env: dict) -> dict:
    """In a subprocess (its own threads, allocator and RNG): train, sample, write PNGs and timings."""
    out = work / "ddpm-pytorch"
    cmd = [sys.executable, "-m", "benchmarks.cpu_quality", "--ddpm-worker", "--data", args.data, "--work", str(work),
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--num-samples", str(args.num_samples)]
    load = {"train_before": _load()}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"ddpm-pytorch worker failed:\n{proc.stderr[-3000:]}")
    result = json.loads((out / "timing.json").read_text())
    load["sample_after"] = _load()
    return {"model": "ddpm-pytorch", **result, "samples": str(out / "samples"), "load": load}


def ddpm_worker(args: argparse.Namespace) -> None:
    import torch

    from benchmarks._common import import_ddpm_pytorch
    from pokediff.pixels import save_pngs, to_uint8

    ddpm = import_ddpm_pytorch()
    out = Path(args.work) / "ddpm-pytorch"
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    unet = ddpm.Unet(dim=DDPM_DIM, dim_mults=DDPM_MULTS)
    diffusion = ddpm.GaussianDiffusion(unet, image_size=64, sampling_timesteps=25)
    trainer = ddpm.Trainer(diffusion, str(Path(args.data) / "images"), train_batch_size=args.batch_size,
                           train_num_steps=args.steps, save_and_sample_every=10**9, calculate_fid=False,
                           results_folder=str(out / "results"))
    t0 = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = trainer.ema.ema_model.eval()
    done = 0
    with torch.inference_mode():
        while done < args.num_samples:
            n = min(100, args.num_samples - done)
            images = model.sample(batch_size=n)  # (n, 3, 64, 64) in [0, 1]
            save_pngs(to_uint8(images * 2 - 1).cpu(), out / "samples", start=done)
            done += n
    timing = {"params": sum(p.numel() for p in unet.parameters()), "train_seconds": round(train_seconds, 2),
              "sample_seconds": round(time.perf_counter() - t0, 2)}
    (out / "timing.json").write_text(json.dumps(timing) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cpu_quality", description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(ROOT / "outputs" / "dataset"), help="ingested dataset (outputs/dataset)")
    p.add_argument("--work", default=str(ROOT / "outputs" / "cpu_quality"))
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-samples", type=int, default=300)
    p.add_argument("--only", choices=("ours", "ddpm-pytorch"))
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS for both (default: torch's choice)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--ddpm-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.ddpm_worker:
        ddpm_worker(args)
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    # Both sides under the same OpenMP settings (the pokediff CLI would set PASSIVE for itself anyway).
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "PYTHONUNBUFFERED": "1"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    ref = work / "ref_stats.npz"  # `pokediff ref-stats` skips the work when the images are unchanged
    _pokediff("ref-stats", "--overlay", str(SMALL), "--data", args.data, "--out", str(ref), "--quiet", env=env)
    rows = []
    for name, fn in (("ours", run_ours), ("ddpm-pytorch", run_ddpm_pytorch)):
        if args.only in (None, name):
            row = fn(args, work, env)
            metrics = score(Path(row["samples"]), ref, work / name / "metrics.json", env)
            row.update(fid=metrics["fid"], kid_mean=metrics["kid_mean"], num_samples=metrics["num_samples"],
                       train_images_per_second=args.steps * args.batch_size / row["train_seconds"])
            rows.append(row)
    print(f"CPU quality, {args.steps} steps x batch {args.batch_size}, {args.num_samples} DDIM-25 EMA samples vs "
          f"{ref.name} (300 training images), {os.cpu_count()} CPUs")
    print("| model | params (M) | train s | train img/s | sample s | FID | KID | load (train start -> end) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['params'] / 1e6:.2f} | {r['train_seconds']:.0f} | "
              f"{r['train_images_per_second']:.1f} | {r['sample_seconds']:.0f} | {r['fid']:.1f} | "
              f"{r['kid_mean']:.3f} | {r['load']['train_before'][0]} -> {r['load']['sample_after'][0]} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
