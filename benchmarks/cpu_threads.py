"""Intra-op threads on a shared CPU: training images/s of P pokediff processes side by side with T threads each.

    python -m benchmarks.cpu_threads                    # 1x1 1x2 1x2-passive 2x1 2x2 2x2-passive, 40 steps each
    python -m benchmarks.cpu_threads --configs 2x1,2x2 --steps 60 --json out.json

Each process runs the main job's training step (configs/cpu-small.yaml's model, batch 16, fp32: what
`make pipeline` trains) on random 64x64 images already in memory, and reports its images/s over the
timed steps after a warm-up. The processes of one configuration start together; "PxT" is P processes
with T threads (OMP_NUM_THREADS and torch.set_num_threads), "-passive" adds OMP_WAIT_POLICY=PASSIVE
(idle OpenMP threads sleep instead of spinning). The load average is printed with each configuration:
on a machine shared with other work the numbers move with it.
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
DEFAULT_CONFIGS = "1x1,1x2,1x2-passive,2x1,2x2,2x2-passive"


def worker(steps: int, warmup: int, threads: int) -> dict:
    import itertools

    import torch

    from pokediff.config import DiffusionConfig, load_params, overlay_overrides
    from pokediff.env import tune_cpu_allocator
    from pokediff.models import UNet
    from pokediff.training.step import TrainStep, draw_batch

    tune_cpu_allocator()  # as the pokediff CLI does
    torch.set_num_threads(threads)
    params = load_params(str(ROOT / "params.yaml"), overlay_overrides(ROOT / "configs" / "cpu-small.yaml"), {})
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = UNet(params.model)
    trainer = TrainStep(model, DiffusionConfig(), params.train, device)
    images = torch.randint(0, 256, (256, 3, 64, 64), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    counter = itertools.count()
    B = params.train.batch_size

    def step() -> None:
        batch = draw_batch(images, generator, B, params.diffusion.timesteps, params.train.hflip)
        trainer.update(trainer.loss(batch), next(counter))

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - t0
    return {"threads": torch.get_num_threads(), "seconds": seconds, "images_per_second": steps * B / seconds}


def run_config(name: str, steps: int, warmup: int) -> dict:
    procs_text, _, rest = name.partition("x")
    threads_text, _, policy = rest.partition("-")
    procs, threads = int(procs_text), int(threads_text)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
    if policy == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    cmd = [sys.executable, "-m", "benchmarks.cpu_threads", "--worker", "--threads", str(threads),
           "--steps", str(steps), "--warmup", str(warmup)]
    load_before = os.getloadavg()
    running = [subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(procs)]
    results = []
    for p in running:
        out, _ = p.communicate(timeout=3600)
        if p.returncode:
            raise SystemExit(f"{name}: a worker failed ({p.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    per_process = [r["images_per_second"] for r in results]
    return {"config": name, "processes": procs, "threads": threads, "wait_policy": policy or "default",
            "images_per_second": per_process, "total_images_per_second": sum(per_process),
            "load_before": [round(v, 2) for v in load_before],
            "load_after": [round(v, 2) for v in os.getloadavg()]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cpu_threads", description=__doc__.split("\n")[0])
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"PxT[-passive], comma-separated ({DEFAULT_CONFIGS})")
    p.add_argument("--steps", type=int, default=40, help="timed steps per process (40)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeat", type=int, default=1, help="run the list this many times (interleaved)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.steps, args.warmup, args.threads)), flush=True)
        return 0
    print(f"cpu threads: {os.cpu_count()} CPUs, main job's training step (batch 16), {args.steps} timed steps")
    print("| config | per process img/s | total img/s | load before | load after |")
    print("|---|---|---|---|---|")
    rows = []
    for _ in range(args.repeat):
        for name in args.configs.split(","):
            r = run_config(name.strip(), args.steps, args.warmup)
            rows.append(r)
            print(f"| {r['config']} | {' + '.join(f'{v:.1f}' for v in r['images_per_second'])} | "
                  f"{r['total_images_per_second']:.1f} | {' '.join(map(str, r['load_before']))} | "
                  f"{' '.join(map(str, r['load_after']))} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
