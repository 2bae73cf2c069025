"""How the flow runs one DVC stage: real `dvc repro` on a one-stage project, real processes, real signals.

- `dvc repro` deletes a stage's outputs before it runs the command: a stage that fails, or a run that
  is interrupted (Ctrl-C, or the SIGTERM of a Prefect cancellation, which Prefect's bridge turns into an
  exception), must leave the previous outputs in place;
- the log gets the stage's own lines, without colour codes and without DVC's git advice;
- on a first run the reason is "first run", not every file listed as modified.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

# The stage: writes out/data.txt from params.yaml's `n`; n=2 fails after DVC removed the outputs, n=3
# says so and then works for a minute (time for a signal to arrive).
MAKE = textwrap.dedent("""
    import sys, time, yaml
    n = yaml.safe_load(open("params.yaml"))["n"]
    if n == 2:
        sys.exit("stage failed on purpose")
    if n == 3:
        print("stage started", flush=True)
        time.sleep(60)
    open("out/data.txt", "w").write(f"version {n}\\n")
""")
DVC_YAML = """stages:
  make:
    cmd: mkdir -p out && python make.py
    deps: [make.py]
    params: [n]
    outs: [out]
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "DVC_NO_ANALYTICS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'src'}"}


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A DVC project (no git) whose one stage has run once: out/data.txt is "version 1" and cached."""
    (tmp_path / "make.py").write_text(MAKE)
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    (tmp_path / "params.yaml").write_text("n: 1\n")
    for args in (["init", "--no-scm", "-q"], ["repro", "-q"]):
        subprocess.run([sys.executable, "-m", "dvc", *args], cwd=tmp_path, env=_env(), check=True,
                       capture_output=True)
    assert (tmp_path / "out/data.txt").read_text() == "version 1\n"
    monkeypatch.chdir(tmp_path)
    return tmp_path


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _logger() -> tuple[logging.Logger, _Lines]:
    logger = logging.getLogger(f"test-stage-runs-{time.monotonic_ns()}")
    handler = _Lines()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger, handler


def test_a_failed_stage_leaves_the_previous_outputs(project):
    from pipelines.dvc_tasks import StepFailed, repro_stage

    (project / "params.yaml").write_text("n: 2\n")
    logger, log = _logger()
    with pytest.raises(StepFailed):
        repro_stage("make", logger)
    assert (project / "out/data.txt").read_text() == "version 1\n"  # DVC had deleted it; put back
    assert any("outputs put back" in line for line in log.lines), log.lines


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["cancel-SIGTERM", "Ctrl-C-SIGINT"])
def test_an_interrupted_stage_leaves_the_previous_outputs_and_no_process(project, signum):
    """As a Prefect cancellation does (SIGTERM to the flow run's process group, which Prefect's SIGTERM
    bridge turns into TerminationSignal) or Ctrl-C in a terminal (SIGINT to the foreground group)."""
    (project / "params.yaml").write_text("n: 3\n")
    script = textwrap.dedent("""
        import logging, sys
        from prefect.utilities.engine import capture_sigterm
        from pipelines.dvc_tasks import repro_stage
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
        with capture_sigterm():
            repro_stage("make", logging.getLogger("stage"))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=project, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = []
    for line in proc.stdout:  # wait until DVC has removed the outputs and the command runs
        seen.append(line)
        if "stage started" in line:
            break
    assert not (project / "out/data.txt").exists(), "".join(seen)
    os.killpg(proc.pid, signum)
    out = proc.stdout.read()
    assert proc.wait(timeout=120) != 0, "".join(seen) + out  # what each process said, if the signal was lost
    assert (project / "out/data.txt").read_text() == "version 1\n", "".join(seen) + out
    assert "outputs put back" in out, out
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # every process of the run has exited (dvc, the stage's command)
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        pytest.fail("a process of the interrupted stage is still running")


def test_the_log_has_no_colour_codes_and_no_dvc_git_advice(tmp_path, monkeypatch):
    from pipelines.dvc_tasks import DVC_ADVICE, run_streaming

    monkeypatch.chdir(tmp_path)
    printed = ("\x1b[33mUserWarning: Add type hints\x1b[0m\n"  # what DVC and MLflow print, verbatim
               "To track the changes with git, run:\n\n\tgit add dvc.lock\n\n"
               "To enable auto staging, run:\n\n\tdvc config core.autostage true\n"
               "Use `dvc push` to send your updates to remote storage.\n"
               "Updating lock file 'dvc.lock'\n")
    logger, log = _logger()
    run_streaming([sys.executable, "-c", f"print({printed!r}, end='')"], logger, drop=DVC_ADVICE)
    assert log.lines[1:] == ["UserWarning: Add type hints", "Updating lock file 'dvc.lock'"], log.lines


def test_a_first_run_says_so_instead_of_listing_every_dependency(tmp_path, monkeypatch):
    from pipelines.dvc_tasks import why_stage_runs

    monkeypatch.chdir(tmp_path)
    changes = [{"changed deps": {"src/pokediff/cli.py": "modified"}}]
    assert why_stage_runs("ingest", changes) == "first run (no dvc.lock)"
    Path("dvc.lock").write_text("schema: '2.0'\nstages:\n  ingest:\n    cmd: pokediff ingest\n")
    assert why_stage_runs("train", changes) == "first run of this stage (dvc.lock has no entry for it)"
    assert why_stage_runs("ingest", changes) == "changed deps: src/pokediff/cli.py (modified)"
