"""A machine's team settings: environment first, then team.env; every message names the setting, never
prints a secret. No servers here (tests/team/test_team_e2e.py has the real ones); a port nothing listens
on stands for a server that is down."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from helpers import TINY_CLI_OVERRIDES
from pokediff.team import settings

SECRET = "s3cret-password-0815"


@pytest.fixture(autouse=True)
def _clean(monkeypatch, tmp_path):
    for key in [*settings.SETTINGS, settings.ENV_FILE_VAR]:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(settings, "_sources", {})
    monkeypatch.chdir(tmp_path)


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _project(root: Path, env_text: str | None) -> Path:
    (root / "params.yaml").write_text("{}\n")
    if env_text is not None:
        (root / "team.env").write_text(env_text)
        (root / "team.env").chmod(0o600)
    return root


def test_nothing_configured_leaves_everything_as_it_was(tmp_path):
    before = dict(os.environ)
    assert settings.load(_project(tmp_path, None)) == {}
    assert dict(os.environ) == before
    assert settings.check_mlflow() is None and settings.check_prefect() is None


def test_team_env_fills_in_what_the_environment_does_not_set(tmp_path, monkeypatch):
    project = _project(tmp_path, "# the team\nMLFLOW_TRACKING_URI=http://mlflow-host:5000\n"
                                 f"export MLFLOW_TRACKING_PASSWORD='{SECRET}'\nPREFECT_API_URL=\"http://p:4200/api\"\n")
    monkeypatch.setenv("PREFECT_API_URL", "http://mine:4200/api")
    (project / "sub").mkdir()
    sources = settings.load(project / "sub")
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://mlflow-host:5000"  # found from a sub-folder too
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == SECRET
    assert os.environ["PREFECT_API_URL"] == "http://mine:4200/api"  # the environment wins
    assert sources["PREFECT_API_URL"] == "environment" and sources["MLFLOW_TRACKING_URI"] == str(project / "team.env")


@pytest.mark.parametrize(("text", "words"), [
    ("MLFLOW_TRACKING_URI http://x\n", "team.env:1: expected KEY=VALUE"),
    ("# ok\nMLFLOW_TRAKING_URI=http://x\n", "team.env:2: unknown setting 'MLFLOW_TRAKING_URI'"),
])
def test_a_bad_line_is_one_error_naming_the_file_and_line(tmp_path, text, words):
    with pytest.raises(settings.TeamSettingsError, match=words):
        settings.load(_project(tmp_path, text))


def test_a_team_env_with_passwords_that_others_can_read_gets_a_warning(tmp_path):
    project = _project(tmp_path, f"MLFLOW_TRACKING_PASSWORD={SECRET}\n")
    (project / "team.env").chmod(0o644)
    said = []
    settings.load(project, warn=said.append)
    assert len(said) == 1 and "chmod 600" in said[0] and SECRET not in said[0]


def test_shown_settings_hide_secrets_and_the_credentials_in_urls(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://ana:{SECRET}@mlflow-host:5000/")
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", f"pokediff:{SECRET}")
    text = "\n".join(settings.describe())
    assert SECRET not in text and "http://mlflow-host:5000/" in text and "***" in text


def test_a_server_that_does_not_answer_is_one_line_naming_the_setting_and_its_file(tmp_path):
    port = _dead_port()
    project = _project(tmp_path, f"MLFLOW_TRACKING_URI=http://127.0.0.1:{port}\nMLFLOW_TRACKING_USERNAME=ana\n"
                                 f"MLFLOW_TRACKING_PASSWORD={SECRET}\n")
    env = {k: v for k, v in os.environ.items() if k not in settings.SETTINGS}
    out = subprocess.run([sys.executable, "-m", "pokediff.team", "check"], cwd=project, capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith(f"pokediff team: MLFLOW_TRACKING_URI (from {project / 'team.env'}): "
                                 f"http://127.0.0.1:{port} does not answer (connection refused)")
    assert SECRET not in out.stdout + out.stderr
    # the `pokediff` CLI reads the same file: training stops before it starts, in one line
    (project / "imgs").mkdir()
    for i in range(4):
        Image.new("RGB", (16, 16), (40 * i, 90, 200)).save(project / "imgs" / f"mon_{i}.png")
    train = subprocess.run([sys.executable, "-m", "pokediff", "train", "--data", "imgs", "--steps", "2",
                            *TINY_CLI_OVERRIDES], cwd=project, capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in train.stderr.splitlines() if line.strip()]
    assert train.returncode == 1 and len(lines) == 1, train.stderr
    assert lines[0].startswith(f"pokediff train: MLflow store http://127.0.0.1:{port} not reachable")
    assert SECRET not in train.stdout + train.stderr


def test_a_bad_process_count_for_torchrun_is_a_usage_error(tmp_path):
    env = {**os.environ, "POKEDIFF_TRAIN_PROCESSES": "two"}
    out = subprocess.run([sys.executable, "-m", "pokediff", "train", "--no-track"], cwd=_project(tmp_path, None),
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2 and out.stderr.strip() == (
        "pokediff train: POKEDIFF_TRAIN_PROCESSES='two': expected a whole number of processes from 1 to 64")
