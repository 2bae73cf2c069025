"""train.max_seconds: a wall-clock budget that stops training cleanly, saves, records the steps reached,
and resumes into the same run (the LR schedule spans train.steps; the budget is not in the fingerprint)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import TINY_CLI_OVERRIDES, tiny_model_config, write_noise_pngs
from pokediff.checkpoint import load_file
from pokediff.config import DiffusionConfig, TrainConfig
from pokediff.training import budget as budget_module
from pokediff.training.loop import train


def _images(n=4, res=16):
    imgs = torch.zeros(n, 3, res, res, dtype=torch.uint8)
    for i in range(n):
        imgs[i, i % 3, : res // 2 * (1 + i % 2), :] = 255
        imgs[i, (i + 1) % 3, :, (3 * i) % res: (3 * i) % res + 5] = 200
    return imgs


class _TickingClock:
    """A clock that advances one second per reading: the budget's checks see elapsed = 1, 2, 3 ... at steps
    1, 2, 3 ..., whatever the machine's speed."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now


def _cfg(**kw) -> TrainConfig:
    base = dict(steps=10, batch_size=4, lr=1e-3, warmup_steps=2, log_every=3, checkpoint_every=4, seed=5)
    return TrainConfig(**{**base, **kw})


def test_budget_stops_after_the_crossing_step_saves_and_resumes_into_the_same_run(tmp_path, monkeypatch):
    model_cfg, diff_cfg = tiny_model_config(dropout=0.1), DiffusionConfig()
    full = train(_images(), model_cfg, diff_cfg, _cfg(), tmp_path / "full", progress=False)

    monkeypatch.setattr(budget_module, "time", _TickingClock())
    stopped = train(_images(), model_cfg, diff_cfg, _cfg(max_seconds=4.5), tmp_path / "budget", progress=False)
    # elapsed reaches 5 >= 4.5 after step 5: that step completes, then the run stops and saves.
    assert stopped.step == 5 and stopped.stopped_by_budget
    assert load_file(stopped.checkpoint)["step"] == 5  # the final checkpoint, not the periodic one of step 4
    assert load_file(stopped.model_file)["step"] == 5
    assert stopped.losses == full.losses[:5]  # every step's loss reached the log, the off-interval 5th too
    with stopped.log_file.open() as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [3, 5]  # log_every=3, plus the stopping step

    # Resume with no budget: the same run continues to train.steps, step for step (the LR schedule spans
    # train.steps in both, so a budget stop is exactly a pause).
    resumed = train(_images(), model_cfg, diff_cfg, _cfg(), tmp_path / "budget", progress=False, resume=True)
    assert resumed.resumed_from == 5 and resumed.step == 10 and not resumed.stopped_by_budget
    assert resumed.losses == full.losses[5:]
    a, b = load_file(full.model_file), load_file(resumed.model_file)
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])


def test_a_new_budget_on_resume_counts_from_the_resumed_start(tmp_path, monkeypatch):
    model_cfg, diff_cfg = tiny_model_config(), DiffusionConfig()
    monkeypatch.setattr(budget_module, "time", _TickingClock())
    first = train(_images(), model_cfg, diff_cfg, _cfg(steps=20, max_seconds=3), tmp_path, progress=False)
    second = train(_images(), model_cfg, diff_cfg, _cfg(steps=20, max_seconds=3), tmp_path, progress=False,
                   resume=True)
    assert (first.step, second.resumed_from, second.step) == (3, 3, 6)
    assert first.stopped_by_budget and second.stopped_by_budget


def test_no_budget_and_a_budget_ending_exactly_at_train_steps_are_not_budget_stops(tmp_path, monkeypatch):
    model_cfg, diff_cfg = tiny_model_config(), DiffusionConfig()
    monkeypatch.setattr(budget_module, "time", _TickingClock())
    assert not train(_images(), model_cfg, diff_cfg, _cfg(steps=4), tmp_path / "a", progress=False).stopped_by_budget
    at_end = train(_images(), model_cfg, diff_cfg, _cfg(steps=4, max_seconds=4), tmp_path / "b", progress=False)
    assert at_end.step == 4 and not at_end.stopped_by_budget


# ----------------------------------------------------------------------------------------------
# The CLI with a real clock: stop, record, resume (and --auto-resume keeps the run)
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    return write_noise_pngs(tmp_path_factory.mktemp("pngs"), 6, seed=0)


def _cli(out_dir: Path, image_dir: Path, *extra: str, torchrun: bool = False) -> subprocess.CompletedProcess:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
                if torchrun else [sys.executable])
    cmd = [*launcher, "-m", "pokediff", "train", "--data", str(image_dir), "--out-dir", str(out_dir),
           "--params", "none", "--device", "cpu", "--no-progress", "--no-track", *TINY_CLI_OVERRIDES,
           "-S", "train.batch_size=4", "-S", "train.warmup_steps=2", "-S", "train.checkpoint_every=100000",
           "-S", "train.log_every=2", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, env=env, cwd=out_dir.parent, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr[-4000:]}"
    return proc


def test_cli_budget_stops_records_the_steps_and_resumes(tmp_path, image_dir):
    out = tmp_path / "run"
    # 10^6 steps of even this tiny model take far longer than 2 s on any machine: the budget must end it.
    proc = _cli(out, image_dir, "-S", "train.steps=1000000", "-S", "train.max_seconds=2")
    metrics = json.loads((out / "train_metrics.json").read_text())
    reached = metrics["steps"]
    assert 1 <= reached < 1_000_000 and metrics["stopped_by_budget"] == 1
    assert f"stopped by the wall-clock budget (train.max_seconds=2) at step {reached} of 1000000" in proc.stdout
    assert load_file(out / "model.safetensors")["step"] == reached
    assert load_file(out / "checkpoints" / "last.pt")["step"] == reached

    # --auto-resume with a new budget: max_seconds is bookkeeping, not identity, so the checkpoint's
    # fingerprint still matches and the same run continues from where the budget stopped it.
    proc = _cli(out, image_dir, "--auto-resume", "-S", "train.steps=1000000", "-S", "train.max_seconds=1.5")
    assert f"resuming from the checkpoint at step {reached}" in proc.stdout
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["steps"] > reached and metrics["stopped_by_budget"] == 1
    with (out / "train_log.csv").open() as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert reached in steps and steps[-1] == metrics["steps"] and steps == sorted(set(steps))


@pytest.mark.slow
def test_ddp_ranks_stop_together_on_the_budget(tmp_path, image_dir):
    """Two gloo processes: they must agree on the stopping step (at a log step) or the run would hang in
    the next all-reduce; rank 0 then writes the files."""
    out = tmp_path / "ddp"
    proc = _cli(out, image_dir, "-S", "train.steps=1000000", "-S", "train.max_seconds=2", torchrun=True)
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["stopped_by_budget"] == 1 and metrics["steps"] % 2 == 0  # log_every=2: ranks agree there
    assert load_file(out / "model.safetensors")["step"] == metrics["steps"]
    assert proc.stdout.count("stopped by the wall-clock budget") == 1  # rank 0 only
