"""Prepare, on this machine, what the GPU run carries in `.device/` (git-ignored): the wheels for the GPU
machine's Python 3.12 and the ingested sprites, packed; then check that everything fits.

    python -m benchmarks.device_prepare                       # wheels + dataset + size check
    python -m benchmarks.device_prepare wheels                # pip download for cp312, manylinux x86_64
    python -m benchmarks.device_prepare dataset --data outputs/dataset
    python -m benchmarks.device_prepare check                 # what the run would carry, against 64 MiB

The run carries the working tree (tracked files and untracked, non-ignored ones) plus the ignored
paths named in the call (here only `.device`), 64 MiB in all. The wheels are exactly
benchmarks/device_requirements.txt, downloaded with --no-deps: that list is closed (the CPU rehearsal,
`bash benchmarks/device_run.sh --dry-run-cpu`, hides every other package to prove it).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARRY = ROOT / ".device"
REQUIREMENTS = Path(__file__).with_name("device_requirements.txt")
CARRY_LIMIT = 64 * 2**20
# The GPU machine: CPython 3.12 on Linux x86_64 (manylinux wheels of any glibc up to 2.28, and abi3 ones)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux_2_12_x86_64", "manylinux2010_x86_64", "linux_x86_64")


def download_wheels(dest: Path, python_version: str = "3.12") -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    abi = "cp" + python_version.replace(".", "")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(dest), "--no-deps",
           "--only-binary=:all:", "--python-version", python_version, "--implementation", "cp", "--abi", abi,
           "--abi", "abi3", "--abi", "none", *[a for p in PLATFORMS for a in ("--platform", p)],
           "--platform", "any", "-r", str(REQUIREMENTS)]
    subprocess.run(cmd, check=True)
    wanted = {_dist_of_line(line) for line in _requirement_lines()}
    stale = [w for w in dest.glob("*.whl") if _dist_of_wheel(w) not in wanted]
    for w in stale:  # a wheel this script downloaded for an earlier version of the list
        w.unlink()
    return sorted(dest.glob("*.whl"))


def _requirement_lines() -> list[str]:
    lines = (ln.split("#", 1)[0].strip() for ln in REQUIREMENTS.read_text().splitlines())
    return [ln for ln in lines if ln]


def _norm(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def _dist_of_line(line: str) -> tuple[str, str]:
    name, _, version = line.partition("==")
    return _norm(name), version


def _dist_of_wheel(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return _norm(name), version


def carried_files(root: Path = ROOT) -> list[Path]:
    """The working tree as the device copies it: tracked files and untracked files git does not ignore."""
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         check=True, capture_output=True).stdout.decode()
    return [root / p for p in out.split("\0") if p and (root / p).is_file()]


def report(carry: Path = CARRY, root: Path = ROOT) -> int:
    """Print the carried sizes; 1 when over the limit or when a wheel is missing."""
    tree = sum(p.stat().st_size for p in carried_files(root))
    wheels = sorted((carry / "wheels").glob("*.whl"))
    data = [carry / n for n in ("dataset.u8.xz", "dataset.json") if (carry / n).exists()]
    print("wheels (cp312):")
    for w in sorted(wheels, key=lambda p: -p.stat().st_size):
        print(f"  {w.stat().st_size / 2**20:7.2f} MiB  {w.name}")
    wheel_bytes = sum(w.stat().st_size for w in wheels)
    data_bytes = sum(p.stat().st_size for p in data)
    total = tree + wheel_bytes + data_bytes
    print(f"working tree {tree / 2**20:.2f} MiB + {len(wheels)} wheels {wheel_bytes / 2**20:.2f} MiB + "
          f"dataset {data_bytes / 2**20:.2f} MiB = {total / 2**20:.2f} MiB of {CARRY_LIMIT / 2**20:.0f} MiB")
    missing = {_dist_of_line(ln) for ln in _requirement_lines()} - {_dist_of_wheel(w) for w in wheels}
    if missing:
        print(f"missing wheels: {sorted(n for n, _ in missing)} (run: python -m benchmarks.device_prepare wheels)")
    if not data:
        print("no packed dataset (run: python -m benchmarks.device_prepare dataset)")
    return 1 if total > CARRY_LIMIT or missing or not data else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.device_prepare", description=__doc__.split("\n")[0])
    p.add_argument("what", nargs="?", default="all", choices=("all", "wheels", "dataset", "check"))
    p.add_argument("--data", default=str(ROOT / "outputs" / "dataset"), help="the ingested dataset to pack")
    p.add_argument("--carry", default=str(CARRY), help="the carried folder (default: .device)")
    args = p.parse_args(argv)
    carry = Path(args.carry)
    if args.what in ("all", "wheels"):
        download_wheels(carry / "wheels")
    if args.what in ("all", "dataset"):
        from benchmarks.device_dataset import pack_images

        header = pack_images(args.data, carry)
        print(f"dataset: {header['shape'][0]} images {header['shape'][2]}x{header['shape'][3]} -> "
              f"{header['compressed_bytes'] / 2**20:.2f} MiB")
    return report(carry)


if __name__ == "__main__":
    sys.exit(main())
