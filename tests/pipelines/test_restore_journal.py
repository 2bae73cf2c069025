"""A flow run that is killed outright (no `finally`) cannot put params.yaml back itself: the next run
does, from the journal the killed one left, and keeps what it replaced."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

COMMITTED = "train:\n  steps: 600\n"

# A real run's body: overrides written into params.yaml, a new dvc.lock, then SIGKILL mid-stage.
KILLED_RUN = f"""
import os, signal, sys
sys.path.insert(0, {str(REPO)!r})
from pathlib import Path
from pipelines.dvc_tasks import files_restored
with files_restored(Path("params.yaml"), Path("dvc.lock")):
    Path("params.yaml").write_text("train:\\n  steps: 7\\n")
    Path("dvc.lock").write_text("schema: '2.0'\\n")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _project(tmp_path: Path) -> Path:
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "params.yaml").write_text(COMMITTED)
    return tmp_path


def test_the_next_run_puts_back_what_a_killed_run_changed(tmp_path, monkeypatch):
    from pipelines.dvc_tasks import JOURNAL_DIR, files_restored

    project = _project(tmp_path)
    r = subprocess.run([sys.executable, "-c", KILLED_RUN], cwd=project, capture_output=True, text=True)
    assert r.returncode == -9, r.stderr
    assert (project / "params.yaml").read_text() == "train:\n  steps: 7\n"  # the kill skipped the finally

    monkeypatch.chdir(project)
    lines: list[str] = []
    from pipelines.dvc_tasks import recover_interrupted_runs

    restored = recover_interrupted_runs(lines.append)
    assert sorted(map(str, restored)) == ["dvc.lock", "params.yaml"]
    assert (project / "params.yaml").read_text() == COMMITTED
    assert not (project / "dvc.lock").exists()  # it did not exist before the killed run
    # Nothing lost: what the killed run left is kept, and the messages say where.
    kept = list((project / JOURNAL_DIR).glob("left-by-run-*/params.yaml"))
    assert len(kept) == 1 and kept[0].read_text() == "train:\n  steps: 7\n"
    assert len(lines) == 2 and all("killed" in line and "\n" not in line for line in lines)
    assert not list((project / JOURNAL_DIR).glob("run-*"))
    # A normal run afterwards restores on its own and leaves no journal behind.
    with files_restored(Path("params.yaml")):
        assert list((project / JOURNAL_DIR).glob("run-*/manifest.json"))
        Path("params.yaml").write_text("changed\n")
    assert (project / "params.yaml").read_text() == COMMITTED
    assert not list((project / JOURNAL_DIR).glob("run-*"))


def test_a_live_runs_journal_is_left_alone(tmp_path, monkeypatch):
    from pipelines.dvc_tasks import JOURNAL_DIR, recover_interrupted_runs

    project = _project(tmp_path)
    monkeypatch.chdir(project)
    live = JOURNAL_DIR / f"run-{os.getppid()}"  # pytest's parent: alive for the whole test
    live.mkdir(parents=True)
    (live / "0").write_text("old\n")
    (live / "manifest.json").write_text('{"files": [["params.yaml", true]]}')
    assert recover_interrupted_runs(lambda line: None) == []
    assert (project / "params.yaml").read_text() == COMMITTED and live.is_dir()
