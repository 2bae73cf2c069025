"""Smoke tests of the speed benchmarks on CPU: they run end to end, in-process, at the tiniest settings,
and print consistent tables. No speed is asserted (CI runs on a shared 2-core CPU)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

# `benchmarks` is a top-level package of the repository, not of the installed pokediff distribution.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import sampling, train_throughput  # noqa: E402
from benchmarks._common import (  # noqa: E402
    Prepared,
    count_flops,
    measure_models,
    parse_table,
)

MODELS = ("ours", "ddpm-pytorch", "diffusers")
TINY = ["--device", "cpu", "--resolution", "32", "--batch-size", "1", "--windows", "2", "--warmup", "0"]


@pytest.fixture
def one_thread():
    """One intra-op thread: on a loaded 2-core machine two threads spin-wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _number(cell: str) -> float:
    value = float(cell.rstrip("%"))
    assert math.isfinite(value) and value > 0, cell
    return value


def _assert_ratio(printed_ratio: str, numerator: str, denominator: str) -> None:
    """The printed ratio equals the quotient of the printed images/s (4 significant digits each, ratio to
    3 decimals: allow for that rounding only)."""
    ratio, quotient = _number(printed_ratio), _number(numerator) / _number(denominator)
    assert abs(ratio - quotient) <= 5e-4 + 1.5e-3 * quotient, (printed_ratio, numerator, denominator)


def test_train_throughput_smoke(tmp_path, capsys, one_thread):
    out = tmp_path / "train.json"
    assert train_throughput.main([*TINY, "--steps-per-window", "1", "--json", str(out)]) == 0
    rows = {r["model"]: r for r in parse_table(capsys.readouterr().out)}
    assert set(rows) == set(MODELS)
    for row in rows.values():
        for column in ("params (M)", "GFLOP/img fwd+bwd", "images/s", "ms/step", "ours/this"):
            _number(row[column])
        _assert_ratio(row["ours/this"], rows["ours"]["images/s"], row["images/s"])
    assert rows["ours"]["ours/this"] == "1.000"

    result = json.loads(out.read_text())
    by_model = {r["model"]: r for r in result["rows"]}
    assert result["settings"]["interleave"] is True  # the CPU default
    for r in by_model.values():
        assert len(r["window_seconds"]) == 2
        assert r["ours_over_this"] == pytest.approx(by_model["ours"]["images_per_s"] / r["images_per_s"])
        assert r["mfu"] is None and r["peak_memory_gib"] is None  # no peak or GPU memory on CPU
    # Our default U-Net at 32x32: the FLOP count scales with the pixels (70.68 GFLOP at 64x64).
    assert by_model["ours"]["gflop_per_image"] == pytest.approx(17.96, rel=1e-3)


def test_sampling_smoke(tmp_path, capsys, one_thread):
    out = tmp_path / "sampling.json"
    assert sampling.main([*TINY, "--ddim-steps", "1", "--dpm-steps", "2", "--json", str(out)]) == 0
    rows = {r["model"]: r for r in parse_table(capsys.readouterr().out)}
    assert set(rows) == {"ours", "ours-dpmpp2m", "ddpm-pytorch", "diffusers"}
    assert [rows[m]["sampler"] for m in rows] == ["ddim", "dpmpp2m", "ddim", "ddim"]
    assert rows["ours-dpmpp2m"]["steps"] == "2" and rows["diffusers"]["steps"] == "1"
    for row in rows.values():
        for column in ("GFLOP/img/eval", "images/s", "ms/eval", "ours DDIM/this", "ours DPM++/this"):
            _number(row[column])
        _assert_ratio(row["ours DDIM/this"], rows["ours"]["images/s"], row["images/s"])
        _assert_ratio(row["ours DPM++/this"], rows["ours-dpmpp2m"]["images/s"], row["images/s"])
    result = json.loads(out.read_text())
    assert {r["model"] for r in result["rows"]} == set(rows)


def test_sampling_rejects_cuda_graphs_without_cuda():
    with pytest.raises(SystemExit):
        sampling.parse_args(["--device", "cpu", "--cuda-graphs"])


def test_attention_flops_do_not_depend_on_the_kernel():
    """FlopCounterMode has formulas for the CUDA attention kernels only, and theirs add the recomputed
    Q K^T to the backward; the benchmarks count model FLOPs the same way for every kernel and device."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (torch.randn(2, 4, 64, 32, requires_grad=True) for _ in range(3))  # (B, heads, L, D)
    step = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()
    counts = []
    for backend in (SDPBackend.MATH, SDPBackend.FLASH_ATTENTION):
        with sdpa_kernel(backend):
            counts.append(count_flops(step))
    forward = 2 * (2 * 2 * 4 * 64 * 64 * 32)  # Q K^T and P V: 2 B H L^2 D each
    assert counts == [3 * forward, 3 * forward]  # backward = twice the forward


@pytest.mark.parametrize("interleave", [False, True])
def test_a_failing_model_is_reported_and_the_others_still_run(interleave):
    calls = {"ok": 0}

    def prepare(name: str) -> Prepared:
        if name == "broken":
            raise RuntimeError("CUDA out of memory\nsecond line")
        return Prepared(lambda: calls.__setitem__("ok", calls["ok"] + 1), {"params": 1})

    results = measure_models(["ok", "broken"], prepare, torch.device("cpu"), windows=3, calls_per_window=2,
                             warmup=1, interleave=interleave)
    assert list(results) == ["ok", "broken"]
    assert results["broken"].error == "RuntimeError: CUDA out of memory"
    assert len(results["ok"].timing.seconds) == 3 and calls["ok"] == 1 + 3 * 2
