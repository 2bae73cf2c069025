"""What the Prefect flows need from DVC and the shell: the stage list, a stage's status, running a
command with its output in the run's log, and keeping params.yaml / dvc.lock as the user left them.

Everything is read from DVC itself (its Python API and `--json` output), never from its prose.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pokediff.env import OFFLINE_DEFAULTS
from pokediff.locks import pid_alive

PARAMS_FILE = Path("params.yaml")
LOCK_FILE = Path("dvc.lock")
# Copies of the files a run will put back, kept while it runs: a run killed before its `finally`
# (SIGKILL, power loss) is undone by the next one. Under DVC's own scratch folder (git-ignored).
JOURNAL_DIR = Path(".dvc/tmp/pokediff-restore")
MAX_JSON_BYTES = 10_000_000  # a DVC status / metrics answer or a metrics file larger than this is refused
TAIL_LINES = 30


class StepFailed(RuntimeError):
    """A command failed; the message is one line (the command and its exit code), the tail is logged."""


def env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Subprocess environment: this interpreter's scripts first on PATH (pokediff, dvc), no telemetry."""
    out = {**OFFLINE_DEFAULTS, **os.environ, **(extra or {})}
    out["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{out.get('PATH', '')}"
    out.setdefault("PYTHONUNBUFFERED", "1")
    return out


def run_streaming(cmd: list[str], logger, extra_env: dict[str, str] | None = None) -> None:
    """Run cmd in the project directory, each output line into ``logger`` as it comes (so `--watch`
    and the UI show the stage's own progress lines). Progress-bar redraws (\\r) are dropped."""
    logger.info("$ %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env(extra_env), errors="replace")
    tail: list[str] = []
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.rstrip("\n")
        if "\r" in line:  # a tqdm redraw: keep only its last frame
            line = line.rsplit("\r", 1)[-1]
        if not line.strip():
            continue
        logger.info(line[:2000])
        tail = (tail + [line])[-TAIL_LINES:]
    if proc.wait() != 0:
        logger.error("last lines of `%s`:\n%s", " ".join(cmd[:4]), "\n".join(tail))
        raise StepFailed(f"`{' '.join(cmd)}` failed with exit code {proc.returncode} (its output is in the log above)")


def _json_out(cmd: list[str]) -> object:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env())
    if out.returncode != 0:
        last = (out.stderr.strip() or out.stdout.strip()).splitlines()[-1:] or [""]
        raise StepFailed(f"`{' '.join(cmd)}` failed: {last[0][:300]}")
    if len(out.stdout) > MAX_JSON_BYTES:
        raise StepFailed(f"`{' '.join(cmd)}`: answer larger than {MAX_JSON_BYTES} bytes")
    return json.loads(out.stdout or "{}")


def dvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def pipeline_stages(project: str | Path = ".") -> list[str]:
    """The stage names of dvc.yaml in an order DVC can run them (dependencies first; ties keep
    dvc.yaml's order), from DVC's own graph."""
    # dvc: ~1 s to import; the flows load it only when a flow runs
    import networkx as nx
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with Repo(str(project)) as repo:
        graph = repo.index.graph  # edges: stage -> the stages whose outputs it depends on
        stages = [s for s in repo.index.stages if isinstance(s, PipelineStage)]
        position = {s.addressing: i for i, s in enumerate(stages)}
        order = nx.lexicographical_topological_sort(graph.reverse(copy=True),
                                                    key=lambda s: f"{position.get(s.addressing, -1):06d}")
        return [s.addressing for s in order if isinstance(s, PipelineStage)]


def stage_outputs(project: str | Path = ".") -> dict[str, dict[str, list[str]]]:
    """stage -> {"outs": [...], "metrics": [...], "plots": [...]} paths, from dvc.yaml via DVC."""
    from dvc.repo import Repo  # dvc: ~1 s to import, as in pipeline_stages
    from dvc.stage import PipelineStage

    found: dict[str, dict[str, list[str]]] = {}
    with Repo(str(project)) as repo:
        for stage in repo.index.stages:
            if not isinstance(stage, PipelineStage):
                continue
            entry = found.setdefault(stage.addressing, {"outs": [], "metrics": [], "plots": []})
            for out in stage.outs:
                kind = "metrics" if out.metric else "plots" if out.plot else "outs"
                entry[kind].append(str(out.def_path))
    return found


def stage_changes(stage: str) -> list:
    """`dvc status --json <stage>`: what changed since dvc.lock ([] = up to date, DVC would skip it)."""
    answer = _json_out(dvc("status", "--json", stage))
    return answer.get(stage, []) if isinstance(answer, dict) else []


def describe_changes(changes: list, max_names: int = 8) -> str:
    """DVC's status entries -> one short line, e.g. "params sample.sampler; deps src/pokediff/generation.py"
    (at most ``max_names`` names per kind, then how many more)."""
    parts = []
    for change in changes:
        if isinstance(change, str):  # "always changed", "changed checksum"
            parts.append(change)
            continue
        for kind, items in change.items():
            names = []
            for path, what in (items or {}).items():
                if isinstance(what, dict):  # params: {"params.yaml": {"sample.sampler": "modified"}}
                    names += [f"{key} ({state})" for key, state in what.items()]
                else:
                    names.append(f"{path} ({what})")
            more = f" and {len(names) - max_names} more" if len(names) > max_names else ""
            parts.append(f"{kind}: {', '.join(names[:max_names])}{more}")
    return "; ".join(parts) or "changed"


def read_json_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        return {}
    if path.stat().st_size > MAX_JSON_BYTES:
        raise StepFailed(f"{path}: larger than {MAX_JSON_BYTES} bytes")
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}


def git_params_differ() -> bool:
    """True when params.yaml differs from the committed one (git's view; False outside git)."""
    out = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", str(PARAMS_FILE)], capture_output=True)
    return out.returncode == 1


def _staged(paths: tuple[Path, ...]) -> set[str] | None:
    """Which of ``paths`` git's index holds changes for (None outside a git checkout)."""
    out = subprocess.run(["git", "diff", "--cached", "--name-only", "--", *map(str, paths)],
                         capture_output=True, text=True)
    return set(out.stdout.split()) if out.returncode == 0 else None


def recover_interrupted_runs(warn=None) -> list[Path]:
    """Put back the files that a killed run (its pid is gone) had promised to restore. What such a run
    left in their place is kept beside its journal (nothing is lost); ``warn`` gets one line per file."""
    warn = warn or (lambda line: print(line, file=sys.stderr))
    restored: list[Path] = []
    if not JOURNAL_DIR.is_dir():
        return restored
    for entry in sorted(JOURNAL_DIR.glob("run-*")):
        try:
            pid = int(entry.name.removeprefix("run-"))
        except ValueError:
            continue  # not ours: leave it
        if pid_alive(pid):
            continue
        try:
            files = list(json.loads((entry / "manifest.json").read_text()[:MAX_JSON_BYTES])["files"])
        except FileNotFoundError:
            files = []  # killed while writing its journal, before it changed anything
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable: leave it for a person to look at
        left_dir = JOURNAL_DIR / f"left-by-{entry.name}"
        for index, (name, existed) in enumerate(files):
            path = Path(name)
            saved = (entry / str(index)).read_bytes() if existed else None
            current = path.read_bytes() if path.is_file() else None
            if current == saved:
                continue
            if current is not None:  # keep what the killed run (or anyone since) wrote there
                left_dir.mkdir(parents=True, exist_ok=True)
                (left_dir / path.name).write_bytes(current)
            if saved is None:
                path.unlink()
            else:
                path.write_bytes(saved)
            restored.append(path)
            kept = f"; what was there is kept in {left_dir / path.name}" if current is not None else ""
            warn(f"{path}: put back as it was before run pid {pid}, which was killed before restoring it{kept}")
        shutil.rmtree(entry)
    return restored


@contextmanager
def files_restored(*paths: Path, unstage: tuple[Path, ...] = ()) -> Iterator[None]:
    """Put each file back byte for byte on the way out (also on failure), or remove it when it did
    not exist: a run with overrides leaves params.yaml as the user had it, and its experiment
    (`dvc exp show`) holds what the run used. `dvc exp save` / `dvc exp run` may stage files in git's
    index (dvc.lock when git does not track it yet, and with it params.yaml): what they staged is
    unstaged again (for ``paths`` and ``unstage``); what the user had staged stays. A journal of the
    saved bytes lets the next run finish the job when this one is killed outright."""
    recover_interrupted_runs()
    saved = {p: p.read_bytes() if p.is_file() else None for p in paths}
    journal = JOURNAL_DIR / f"run-{os.getpid()}"
    journal.mkdir(parents=True, exist_ok=True)
    for index, data in enumerate(saved.values()):
        if data is not None:
            (journal / str(index)).write_bytes(data)
    # The manifest last: a journal without one is incomplete and ignored.
    manifest = {"pid": os.getpid(), "files": [[str(p), data is not None] for p, data in saved.items()]}
    (journal / "manifest.json").write_text(json.dumps(manifest))
    watched = tuple(paths) + tuple(unstage)
    staged_before = _staged(watched)
    try:
        yield
    finally:
        for path, data in saved.items():
            if data is None:
                path.unlink(missing_ok=True)
            elif not path.is_file() or path.read_bytes() != data:
                path.write_bytes(data)
        shutil.rmtree(journal, ignore_errors=True)
        staged_now = _staged(watched)
        if staged_before is not None and staged_now:
            added = sorted(staged_now - staged_before)
            if added:
                subprocess.run(["git", "reset", "-q", "--", *added], capture_output=True)
