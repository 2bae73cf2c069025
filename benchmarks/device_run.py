"""The GPU run (issue 20) as one script; `bash benchmarks/device_run.sh` installs the wheels, then runs this.

Phases, each a subprocess with its own time limit and log; a phase that fails or runs out of time is
recorded and the next one still runs:

    environment   python, torch, CUDA, GPU, compiler (Inductor/Triton need one for --compile)
    dataset       .device/dataset.u8.xz -> <work>/dataset/images/*.png (benchmarks/device_dataset.py)
    bench         train_throughput and sampling against the references, eager, then ours compiled,
                  sharing one time budget (--bench-seconds, 90 s: the issue allows 2 minutes)
    train         `pokediff train` on the sprites, params.yaml's recipe (bf16 autocast and EMA on CUDA),
                  --no-track, in-training FID off (no Inception weights travel), train.max_seconds = --train-seconds
    sample        `pokediff sample`: --num-images DDIM-50 EMA images from the model file (or the last
                  checkpoint if training was cut short)
    pack          into $OUT (at most 8 files of at most 16 MiB): summary.json (environment, every phase's
                  command, seconds and status, the benchmark results, train_metrics.json, sample_info.json),
                  logs.tar.xz (phase logs, train_log.csv, grid.png, progression.png, nvidia-smi samples),
                  samples.tar.gz (the PNGs; split into samples.tar.gz.part00 ... if over 15 MiB:
                  `cat samples.tar.gz.part* | tar -xz`)

summary.json and logs.tar.xz are rewritten after every phase, so a run killed by its time limit still
returns what it finished. --dry-run-cpu rehearses every phase on this machine at toy sizes (tiny U-Net,
seconds of training, 8 samples) with the local venv and every package outside the wheel set hidden
(benchmarks/import_guard.py); the compiled benchmark phases only have their arguments checked there
(the CPU tests compile the same code: tests/training/test_gpu_paths.py).

Time plan on the GPU (estimates: nothing here has run on a GPU yet): wheels ~20 s, environment and
dataset ~15 s, benchmarks <= 90 s, training 300 s + ~25 s of start-up and saving, sampling ~30 s,
packing ~10 s: about 8.3 minutes, above the 8-minute target by the benchmarks' share; --bench-seconds 60
brings it to 8. --deadline-seconds (500, installation excluded) cuts the sampling short (the images
written so far are packed) rather than overrunning.
This module imports only the standard library at the top, so it reports even a broken installation.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20
FILE_LIMIT, MAX_FILES = 16 * MiB, 8
PART_BYTES = 15 * MiB


@dataclass
class Phase:
    name: str
    seconds: float = 0.0
    status: str = "pending"  # ok | failed | timeout | skipped
    returncode: int | None = None
    command: list[str] = field(default_factory=list)
    note: str = ""


@dataclass
class Settings:
    """What differs between the GPU run and its CPU rehearsal."""

    dry_run: bool
    import_guard: bool  # hide packages outside the wheel set (the rehearsal on the local venv)
    train_seconds: float
    bench_seconds: float
    num_images: int
    deadline_seconds: float
    train_overrides: list[str]
    sample_args: list[str]
    bench_train_args: list[str]
    bench_sampling_args: list[str]
    bench_caps: dict[str, float]


def gpu_settings(args: argparse.Namespace) -> Settings:
    return Settings(
        dry_run=False, import_guard=False, train_seconds=args.train_seconds, bench_seconds=args.bench_seconds,
        num_images=args.num_images, deadline_seconds=args.deadline_seconds,
        # params.yaml's recipe; only the budget and the in-training FID (its Inception weights stay home) change
        train_overrides=["-S", f"train.max_seconds={args.train_seconds:g}", "-S", "train.eval_every=0"],
        sample_args=["--sampler", "ddim", "--steps", "50", "--batch-size", "256"],
        bench_train_args=["--windows", "3", "--steps-per-window", "10", "--warmup", "3"],
        bench_sampling_args=["--windows", "2", "--warmup", "1"],
        bench_caps={"bench-train-eager": 40, "bench-sampling-eager": 45, "bench-train-compiled": 90,
                    "bench-sampling-compiled": 60},
    )


TINY_MODEL = ["-S", "model.base_channels=16", "-S", "model.channel_mults=[1,2]", "-S", "model.num_res_blocks=1",
              "-S", "model.attention_resolutions=[8]", "-S", "model.head_channels=8", "-S", "model.groups=8",
              "-S", "model.resolution=16", "-S", "data.resolution=16"]


def dry_run_settings(args: argparse.Namespace) -> Settings:
    seconds = min(args.train_seconds, 5.0)
    return Settings(
        dry_run=True, import_guard=not args.installed_wheels, train_seconds=seconds,
        bench_seconds=args.bench_seconds, num_images=min(args.num_images, 8), deadline_seconds=args.deadline_seconds,
        # bf16 on the CPU too: on CUDA params.yaml's precision "auto" means bf16
        train_overrides=[*TINY_MODEL, "-S", "train.batch_size=4", "-S", "train.steps=100000",
                         "-S", "train.warmup_steps=5", "-S", "train.log_every=5", "-S", "train.precision=bf16",
                         "-S", f"train.max_seconds={seconds:g}", "-S", "train.eval_every=0"],
        sample_args=["--sampler", "ddim", "--steps", "2", "--batch-size", "4", "--precision", "bf16"],
        bench_train_args=["--device", "cpu", "--resolution", "32", "--batch-size", "1", "--windows", "1",
                          "--warmup", "0", "--threads", "1", "--steps-per-window", "1"],
        bench_sampling_args=["--device", "cpu", "--resolution", "32", "--batch-size", "1", "--windows", "1",
                             "--warmup", "0", "--threads", "1", "--ddim-steps", "1", "--dpm-steps", "2"],
        bench_caps={"bench-train-eager": 120, "bench-sampling-eager": 120},
    )


class Run:
    def __init__(self, settings: Settings, carry: Path, out: Path, work: Path, extra_logs: list[Path]):
        self.s, self.carry, self.out, self.work = settings, carry, out, work
        self.t0 = time.monotonic()
        self.phases: list[Phase] = []
        self.summary: dict = {"mode": "dry-run-cpu" if settings.dry_run else "gpu",
                              "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                              "settings": asdict(settings), "benchmarks": {}}
        self.logs = work / "logs"
        self.extra_logs = extra_logs
        self.guard_log = self.logs / "import_guard.txt"
        for d in (out, self.logs):
            d.mkdir(parents=True, exist_ok=True)

    # ---- running things
    def remaining(self) -> float:
        return self.s.deadline_seconds - (time.monotonic() - self.t0)

    def python(self, module: str, *args: str) -> list[str]:
        if self.s.import_guard:  # as on the GPU machine: only torch, the stdlib and the wheel set are importable
            return [sys.executable, "-m", "benchmarks.import_guard", "--log", str(self.guard_log), "-m", module, *args]
        return [sys.executable, "-m", module, *args]

    def run(self, name: str, cmd: list[str], timeout: float) -> Phase:
        phase = Phase(name, command=cmd)
        self.phases.append(phase)
        if timeout < 5:
            phase.status, phase.note = "skipped", f"no time left ({timeout:.0f} s)"
            self.checkpoint()
            return phase
        start = time.monotonic()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.s.dry_run:
            env["OMP_NUM_THREADS"] = "1"  # a shared 2-core machine (see README: CPU threads)
        with (self.logs / f"{name}.log").open("w") as log:
            log.write(f"$ {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # its own process group: a timeout ends all of it
            try:
                phase.returncode = proc.wait(timeout=timeout)
                phase.status = "ok" if phase.returncode == 0 else "failed"
            except subprocess.TimeoutExpired:
                _stop_group(proc)
                phase.returncode, phase.status = proc.returncode, "timeout"
                phase.note = f"stopped after its limit of {timeout:.0f} s"
        phase.seconds = round(time.monotonic() - start, 1)
        print(f"device_run: {name}: {phase.status} in {phase.seconds:.1f} s {phase.note}", flush=True)
        self.checkpoint()
        return phase

    def step(self, name: str, fn) -> Phase:
        """An in-process phase (no subprocess): its exception is recorded, not raised."""
        phase = Phase(name)
        self.phases.append(phase)
        start = time.monotonic()
        try:
            phase.note = str(fn() or "")
            phase.status = "ok"
        except Exception as exc:  # noqa: BLE001 - recorded in summary.json, the run goes on
            phase.status, phase.note = "failed", f"{type(exc).__name__}: {exc}"[:500]
        phase.seconds = round(time.monotonic() - start, 1)
        print(f"device_run: {name}: {phase.status} in {phase.seconds:.1f} s {phase.note}", flush=True)
        self.checkpoint()
        return phase

    # ---- results
    def checkpoint(self) -> None:
        """Rewrite summary.json and logs.tar.xz in $OUT: what has finished so far comes back."""
        self.summary["phases"] = [asdict(p) for p in self.phases]
        self.summary["seconds"] = round(time.monotonic() - self.t0, 1)
        for key, path in (("train", self.work / "train" / "train_metrics.json"),
                          ("sample", self.work / "samples" / "sample_info.json")):
            if path.exists():
                self.summary[key] = json.loads(path.read_text())
        for path in sorted(self.work.glob("bench/*.json")):
            self.summary["benchmarks"][path.stem] = json.loads(path.read_text())
        _write_atomic(self.out / "summary.json", json.dumps(self.summary, indent=2) + "\n")
        files = [*sorted(self.logs.glob("*")), *self.extra_logs,
                 *(self.work / "train" / n for n in ("train_log.csv", "train_metrics.json")),
                 *(self.work / "samples" / n for n in ("sample_info.json", "grid.png", "progression.png"))]
        with tarfile.open(self.out / "logs.tar.xz.tmp", "w:xz") as tar:
            for f in files:
                if f.exists():
                    tar.add(f, arcname=f.name)
        (self.out / "logs.tar.xz.tmp").replace(self.out / "logs.tar.xz")


OUT_ENTRIES = ("summary.json*", "logs.tar.xz*", "samples.tar.gz*")
WORK_ENTRIES = ("dataset", "bench", "train", "samples", "logs", "samples.tar.gz")


def _remove_own(folder: Path, patterns: tuple[str, ...]) -> None:
    for pattern in patterns:
        for path in folder.glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# ----------------------------------------------------------------------------------------------
# Phases
# ----------------------------------------------------------------------------------------------
ENV_PROBE = r"""
import json, os, platform, shutil, sys
import torch
info = {"python": platform.python_version(), "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(), "cuda": torch.version.cuda, "cpu_count": os.cpu_count(),
        "c_compiler": shutil.which("cc") or shutil.which("gcc"), "nvidia_smi": shutil.which("nvidia-smi")}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1),
                capability=list(torch.cuda.get_device_capability(0)), cudnn=torch.backends.cudnn.version(),
                bf16=torch.cuda.is_bf16_supported())
try:
    import triton
    info["triton"] = triton.__version__
except ImportError:
    info["triton"] = None
print("ENV " + json.dumps(info))
"""


def environment(run: Run) -> dict:
    phase = run.run("environment", [sys.executable, "-c", ENV_PROBE], timeout=min(120, run.remaining()))
    env: dict = {}
    for line in (run.logs / "environment.log").read_text().splitlines():
        if line.startswith("ENV "):
            env = json.loads(line[4:])
    run.summary["environment"] = env
    if phase.status == "ok" and not run.s.dry_run and not env.get("cuda_available"):
        phase.status, phase.note = "failed", "torch sees no CUDA device: nothing on this machine is worth running"
    run.checkpoint()
    return env


def benchmarks(run: Run, can_compile: bool) -> None:
    bench = run.work / "bench"
    bench.mkdir(parents=True, exist_ok=True)
    budget_end = time.monotonic() + run.s.bench_seconds
    plan = [
        ("bench-train-eager", "benchmarks.train_throughput", run.s.bench_train_args),
        ("bench-sampling-eager", "benchmarks.sampling",
         run.s.bench_sampling_args + ([] if run.s.dry_run else ["--cuda-graphs"])),
        ("bench-train-compiled", "benchmarks.train_throughput",
         run.s.bench_train_args + ["--compile", "--models", "ours"]),
        ("bench-sampling-compiled", "benchmarks.sampling",
         run.s.bench_sampling_args + ["--compile", "--models", "ours"]),
    ]
    for name, module, args in plan:
        argv = [*args, "--json", str(bench / f"{name}.json")]
        if name not in run.s.bench_caps:  # the rehearsal: check the arguments, compile nothing
            run.step(name, lambda m=module, a=argv: _check_arguments(m, a))
            continue
        if "compiled" in name and not can_compile:
            phase = Phase(name, status="skipped", note="no C compiler: Triton cannot build its launchers")
            run.phases.append(phase)
            continue
        timeout = min(run.s.bench_caps[name], budget_end - time.monotonic(), run.remaining())
        run.run(name, run.python(module, *argv), timeout)


def _check_arguments(module: str, argv: list[str]) -> str:
    import importlib

    importlib.import_module(module).parse_args(argv)
    return "arguments checked (not run in the rehearsal)"


def train(run: Run) -> Phase:
    data = run.work / "dataset" / "images"
    cmd = run.python("pokediff", "train", "--data", str(data), "--out-dir", str(run.work / "train"), "--no-track",
                     "--no-progress", *run.s.train_overrides)
    # The budget bounds the loop; start-up (imports, CUDA, 2,572 PNGs) and the final save come on top.
    return run.run("train", cmd, timeout=min(run.s.train_seconds + 150, run.remaining() - 30))


def sample(run: Run) -> Phase:
    model = run.work / "train" / "model.safetensors"
    checkpoint = model if model.exists() else run.work / "train" / "checkpoints" / "last.pt"
    if not checkpoint.exists():
        return run.step("sample", _no_model)
    samples = run.work / "samples"
    cmd = run.python("pokediff", "sample", "--checkpoint", str(checkpoint), "--num-images", str(run.s.num_images),
                     "--out", str(samples / "grid.png"), "--images-dir", str(samples / "images"), *run.s.sample_args)
    phase = run.run("sample", cmd, timeout=run.remaining() - 15)
    if checkpoint != model:
        phase.note += f" (from {checkpoint.name}: training wrote no model file)"
    return phase


def _no_model() -> str:
    raise FileNotFoundError("training left no model file and no checkpoint")


def pack_samples(run: Run) -> str:
    images = sorted((run.work / "samples" / "images").glob("*.png"))
    if not images:
        raise FileNotFoundError("no sample images to pack")
    archive = run.work / "samples.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:  # PNGs are compressed already: gzip for the tar, not xz's minutes
        for p in images:
            tar.add(p, arcname=f"samples/{p.name}")
    size = archive.stat().st_size
    for old in run.out.glob("samples.tar.gz*"):
        old.unlink()
    if size <= PART_BYTES:
        shutil.copyfile(archive, run.out / "samples.tar.gz")
        return f"{len(images)} images, {size / MiB:.2f} MiB"
    parts = -(-size // PART_BYTES)
    if parts > MAX_FILES - 2:  # summary.json and logs.tar.xz take two of the eight files
        raise ValueError(f"{size / MiB:.1f} MiB of samples do not fit in {MAX_FILES - 2} parts of 15 MiB")
    with archive.open("rb") as f:
        for i in range(parts):
            (run.out / f"samples.tar.gz.part{i:02d}").write_bytes(f.read(PART_BYTES))
    return f"{len(images)} images, {size / MiB:.2f} MiB in {parts} parts (cat samples.tar.gz.part* | tar -xz)"


def check_outputs(out: Path) -> str:
    files = [p for p in out.rglob("*") if p.is_file()]
    big = [f"{p.name} ({p.stat().st_size / MiB:.1f} MiB)" for p in files if p.stat().st_size > FILE_LIMIT]
    if len(files) > MAX_FILES or big:
        raise ValueError(f"{len(files)} files in {out} (at most {MAX_FILES}); over 16 MiB: {big}")
    return f"{len(files)} files, {sum(p.stat().st_size for p in files) / MiB:.2f} MiB"


# ----------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.device_run", description=__doc__.split("\n")[0])
    p.add_argument("--dry-run-cpu", action="store_true", help="rehearse on this machine at toy sizes")
    p.add_argument("--carry", default=str(ROOT / ".device"), help="the carried folder (wheels/, dataset.u8.xz)")
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "outputs" / "device_run"),
                   help="where the returned files go (default: $OUT, else outputs/device_run)")
    p.add_argument("--work", help="scratch folder (default: outputs/device_work)")
    p.add_argument("--train-seconds", type=float, default=300.0, help="train.max_seconds of the run (300)")
    p.add_argument("--bench-seconds", type=float, default=90.0, help="time for all benchmark phases (90)")
    p.add_argument("--num-images", type=int, default=2048, help="DDIM-50 EMA samples (2048)")
    p.add_argument("--deadline-seconds", type=float, default=500.0,
                   help="the whole run, installation excluded; sampling is cut short to keep it (500)")
    p.add_argument("--skip", default="", help="comma-separated phases to skip: bench, train, sample")
    p.add_argument("--installed-wheels", action="store_true",
                   help="(set by device_run.sh) the wheels are installed: no import guard needed")
    p.add_argument("--log", action="append", default=[], help="another log to return (the installer's)")
    p.add_argument("-S", dest="overrides", action="append", default=[],
                   help="extra params override for training, e.g. -S train.steps=2400 (repeatable)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = dry_run_settings(args) if args.dry_run_cpu else gpu_settings(args)
    settings.train_overrides += [a for o in args.overrides for a in ("-S", o)]
    work = Path(args.work or ROOT / "outputs" / "device_work")
    out = Path(args.out)
    _remove_own(work, WORK_ENTRIES)  # what an earlier run left; nothing else in these folders is touched
    _remove_own(out, OUT_ENTRIES)
    run = Run(settings, Path(args.carry), out, work, [Path(p) for p in args.log])
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    env = environment(run)
    if run.phases[-1].status != "ok":
        return 1

    def unpack() -> str:
        from benchmarks.device_dataset import unpack_images

        header = unpack_images(run.carry, work / "dataset" / "images")
        return f"{header['shape'][0]} images {header['shape'][2]}x{header['shape'][3]}"

    dataset = run.step("dataset", unpack)
    if "bench" not in skip:
        benchmarks(run, can_compile=bool(env.get("c_compiler")) or settings.dry_run)
    monitor = _gpu_monitor(run, env)
    try:
        if "train" not in skip and dataset.status == "ok":
            train(run)
        if "sample" not in skip:
            sample(run)
    finally:
        if monitor is not None:
            monitor.terminate()
            monitor.wait(timeout=10)
    run.step("pack-samples", lambda: pack_samples(run))
    run.step("check-outputs", lambda: check_outputs(out))
    failed = [p.name for p in run.phases if p.status in ("failed", "timeout")]
    print(f"device_run: done in {run.summary['seconds']:.0f} s; files in {out}" +
          (f"; not ok: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _gpu_monitor(run: Run, env: dict) -> subprocess.Popen | None:
    """nvidia-smi every 5 s during training and sampling: utilisation and memory (memory-check calibration)."""
    if run.s.dry_run or not env.get("nvidia_smi"):
        return None
    log = (run.logs / "nvidia-smi.csv").open("w")
    return subprocess.Popen([env["nvidia_smi"], "--query-gpu=timestamp,utilization.gpu,memory.used,memory.total,"
                             "power.draw,temperature.gpu", "--format=csv", "-l", "5"], stdout=log,
                            stderr=subprocess.STDOUT)


if __name__ == "__main__":
    sys.exit(main())
