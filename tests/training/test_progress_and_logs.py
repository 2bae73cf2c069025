"""What a user sees in a log file: progress lines (the one progress system, terminal or not), no
duplicate eval rows after a resume, and `-S sample.steps` honoured by ddpm."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import torch

from helpers import tiny_model_config
from pokediff.config import DiffusionConfig, TrainConfig

LINE = re.compile(r"^train: step (\d+)/(\d+) \(\d+%\) loss \d+\.\d{4} \d+\.\d img/s ETA (\d+s|\d+m\d\ds|\d+h\d\dm)$")


def _images(n: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8)  # uint8 (N, 3, R, R)


def _train(tmp_path, capsys, **kwargs):
    from pokediff.training.loop import train

    cfg = TrainConfig(steps=12, batch_size=4, warmup_steps=2, log_every=3, checkpoint_every=6)
    train(_images(), tiny_model_config(), DiffusionConfig(timesteps=50), cfg, tmp_path / "run", device="cpu",
          **kwargs)
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("train:")]


def test_progress_lines_without_a_terminal(tmp_path, capsys):
    """The DVC stage's log shows the run's progress (stdout is not a terminal there)."""
    lines = _train(tmp_path, capsys, progress_seconds=0)
    assert [LINE.match(line).group(1) for line in lines] == ["3", "6", "9", "12"], lines
    assert all(LINE.match(line).group(2) == "12" for line in lines)
    assert lines[-1].startswith("train: step 12/12 (100%)") and lines[-1].endswith("ETA 0s")


def test_progress_lines_are_throttled(tmp_path, capsys):
    lines = _train(tmp_path, capsys, progress_seconds=3600)
    assert [LINE.match(line).group(1) for line in lines] == ["3", "12"]  # the first and the last


def test_no_progress_prints_nothing(tmp_path, capsys):
    assert _train(tmp_path, capsys, progress=False, progress_seconds=0) == []


def test_eval_log_drops_rows_after_the_resumed_step(tmp_path):
    from pokediff.training.periodic_eval import EvalLog

    path = tmp_path / "eval_log.csv"
    path.write_text("step,fid,kid_mean\n100,90,0.1\n200,80,0.09\n300,70,0.08\n")
    log = EvalLog(path, keep_rows=True, resume_step=200)  # resumed from the checkpoint at step 200
    log.append(300, 71.0, 0.081)
    rows = path.read_text().splitlines()
    assert rows == ["step,fid,kid_mean", "100,90,0.1", "200,80,0.09", "300,71,0.081"]
    steps = [r.split(",")[0] for r in rows[1:]]
    assert len(steps) == len(set(steps))
    EvalLog(path, keep_rows=False)  # a fresh run starts empty
    assert path.read_text() == "step,fid,kid_mean\n"


def test_in_training_evaluator_is_off_without_eval_every_or_reference_stats(tmp_path, capsys):
    from pokediff.config import load_params
    from pokediff.training.periodic_eval import EvalLog, in_training_evaluator

    log = EvalLog(tmp_path / "eval_log.csv", keep_rows=False)
    off = load_params("none", ["train.eval_every=0"])
    assert in_training_evaluator(off, None, log) is None
    missing = tmp_path / "no_ref_stats.npz"
    on = load_params("none", ["train.eval_every=5", f"score.ref_stats={missing}"])
    assert in_training_evaluator(on, None, log) is None
    assert f"{missing} missing; in-training FID disabled" in capsys.readouterr().out


def test_set_sample_steps_is_honoured_for_ddpm(tmp_path):
    from pokediff.checkpoint import save_model_file
    from pokediff.models import UNet

    net = UNet(tiny_model_config())
    save_model_file(tmp_path / "model.safetensors", net.state_dict(), net.state_dict(), tiny_model_config(),
                    DiffusionConfig(timesteps=100), step=1)
    r = subprocess.run([sys.executable, "-m", "pokediff", "sample", "--checkpoint", "model.safetensors",
                        "--sampler", "ddpm",
                        "-S", "sample.steps=4", "--num-images", "2", "--out", "grid.png", "--device", "cpu"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "sample_info.json").read_text())["steps"] == 4  # was all 100 steps
    assert "sample: 2/2 images" in r.stdout  # a progress line per batch, also without a terminal
