"""Smoke test of the CPU thread benchmark: workers start side by side and report images/s (no speed is
asserted: the machine is shared). The quality benchmark (benchmarks/cpu_quality.py) runs for ~40 min and
is run by hand; its pieces are the pokediff CLI and denoising-diffusion-pytorch's own Trainer."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import cpu_threads  # noqa: E402


@pytest.mark.slow  # two processes importing torch: ~15 s idle, ~1 min on a loaded 2-core machine
def test_cpu_threads_runs_processes_side_by_side(tmp_path, capsys):
    out = tmp_path / "threads.json"
    assert cpu_threads.main(["--configs", "2x1-passive", "--steps", "1", "--warmup", "0", "--json", str(out)]) == 0
    [row] = json.loads(out.read_text())
    assert (row["processes"], row["threads"], row["wait_policy"]) == (2, 1, "passive")
    assert len(row["images_per_second"]) == 2 and all(math.isfinite(v) and v > 0 for v in row["images_per_second"])
    assert "| 2x1-passive |" in capsys.readouterr().out
