#!/usr/bin/env bash
# The GPU run in one command (issue 20): install the carried wheels, then benchmarks/device_run.py runs
# the benchmarks, a 300-s training of params.yaml's recipe and 2,048 DDIM-50 EMA samples, and leaves
# summary.json, logs.tar.xz and samples.tar.gz in $OUT (details: benchmarks/device_run.py).
#
# Before sending it, here (once, ~1 min):
#     pokediff ingest                                  # outputs/dataset (if not there yet)
#     python -m benchmarks.device_prepare              # .device/: 31 cp312 wheels + the packed sprites; checks 64 MiB
#     bash benchmarks/device_run.sh --dry-run-cpu      # the same script at toy sizes, ~1-2 min
#
# The device call (the `run` tool; one line, the carry list, the time limit):
#     command:   bash benchmarks/device_run.sh
#     carry:     [".device"]
#     timeout_s: 560
# A rerun of only what failed: bash benchmarks/device_run.sh --skip bench   (or --skip train,sample);
# extra training overrides pass through: bash benchmarks/device_run.sh -S train.steps=2400
#
# Afterwards, here (<files_at> is where the returned files lie; parts: cat samples.tar.gz.part* | tar -xz):
#     mkdir -p outputs/gpu_run && tar -xzf <files_at>/samples.tar.gz -C outputs/gpu_run && tar -xJf <files_at>/logs.tar.xz -C outputs/gpu_run
#     pokediff ref-stats --data outputs/dataset --out outputs/ref_stats/ref_stats.npz   # every training image
#     pokediff score --samples outputs/gpu_run/samples --ref outputs/ref_stats/ref_stats.npz --out outputs/gpu_run/metrics.json --no-track
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DRY_RUN=0
WHEELS=0
CARRY="$ROOT/.device"
ARGS=()
while (($#)); do
    case "$1" in
        --dry-run-cpu) DRY_RUN=1; ARGS+=("$1") ;;
        # the rehearsal with the carried wheels instead of the venv: PYTHON=<a python 3.12 with torch>
        --install-wheels) WHEELS=1 ;;
        --carry) CARRY="$2"; ARGS+=("$1" "$2"); shift ;;
        *) ARGS+=("$1") ;;
    esac
    shift
done
mkdir -p "$ROOT/outputs"
INSTALL_LOG="$ROOT/outputs/device_install.log"
: > "$INSTALL_LOG"

if ((DRY_RUN && !WHEELS)); then
    # The local venv stands in for the wheels; benchmarks/import_guard.py hides every other package.
    PY="${PYTHON:-python}"
    export PYTHONPATH="$ROOT/src:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
    PY=""
    for candidate in ${PYTHON:-} python3 python; do
        if command -v "$candidate" >/dev/null && "$candidate" -c "import torch" 2>/dev/null; then
            PY="$(command -v "$candidate")"; break
        fi
    done
    if [[ -z "$PY" ]]; then echo "device_run.sh: no python with torch on PATH" | tee -a "$INSTALL_LOG"; exit 1; fi
    DEPS="$ROOT/outputs/device_deps"
    STAMP="$DEPS/.installed-from"
    WANT="$(cat benchmarks/device_requirements.txt; ls "$CARRY/wheels")"
    start=$SECONDS
    if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
        echo "wheels already installed in $DEPS" >> "$INSTALL_LOG"
    else
        rm -rf "$DEPS"
        # --target: no system site-packages are touched (and PEP 668 does not apply); --no-deps: the
        # list is closed, torch and its requirements are the machine's own.
        if ! "$PY" -m pip install --no-index --no-deps --no-compile --disable-pip-version-check \
                --find-links "$CARRY/wheels" --target "$DEPS" -r benchmarks/device_requirements.txt \
                >> "$INSTALL_LOG" 2>&1; then
            echo "pip failed or is missing: unpacking the wheels directly" | tee -a "$INSTALL_LOG"
            rm -rf "$DEPS"
            "$PY" - "$CARRY/wheels" "$DEPS" >> "$INSTALL_LOG" 2>&1 <<'PYEOF'
import pathlib, shutil, sys, zipfile
src, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for wheel in sorted(src.glob("*.whl")):
    with zipfile.ZipFile(wheel) as z:
        z.extractall(dest)
for data in dest.glob("*.data"):  # a wheel's purelib/platlib payload belongs at the top level
    for kind in ("purelib", "platlib"):
        for item in (data / kind).glob("*") if (data / kind).is_dir() else []:
            shutil.move(str(item), dest / item.name)
print("unpacked", len(list(src.glob("*.whl"))), "wheels")
PYEOF
        fi
        printf '%s' "$WANT" > "$STAMP"
    fi
    echo "installation: $((SECONDS - start)) s with $PY ($("$PY" --version 2>&1))" | tee -a "$INSTALL_LOG"
    export PYTHONPATH="$DEPS:$ROOT/src:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    ARGS+=(--installed-wheels)
fi
exec "$PY" -m benchmarks.device_run --log "$INSTALL_LOG" "${ARGS[@]}"
