"""What the Prefect flows need from DVC and the shell: the stage list, a stage's status, running a
command with its output in the run's log, and keeping params.yaml / dvc.lock as the user left them.

Everything is read from DVC itself (its Python API and `--json` output), never from its prose.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARAMS_FILE = Path("params.yaml")
LOCK_FILE = Path("dvc.lock")
MAX_JSON_BYTES = 10_000_000  # a DVC status / metrics answer or a metrics file larger than this is refused
TAIL_LINES = 30


class StepFailed(RuntimeError):
    """A command failed; the message is one line (the command and its exit code), the tail is logged."""


def env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Subprocess environment: this interpreter's scripts first on PATH (pokediff, dvc), no telemetry."""
    from pokediff.env import OFFLINE_DEFAULTS

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
    from dvc.repo import Repo
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


def describe_changes(changes: list) -> str:
    """DVC's status entries -> one short line, e.g. "params sample.sampler; deps src/pokediff/sampling.py"."""
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
            parts.append(f"{kind}: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}")
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


@contextmanager
def files_restored(*paths: Path, unstage: tuple[Path, ...] = ()) -> Iterator[None]:
    """Put each file back byte for byte on the way out (also on failure), or remove it when it did
    not exist: a run with overrides leaves params.yaml as the user had it, and its experiment
    (`dvc exp show`) holds what the run used. `dvc exp save` / `dvc exp run` may stage files in git's
    index (dvc.lock when git does not track it yet, and with it params.yaml): what they staged is
    unstaged again (for ``paths`` and ``unstage``); what the user had staged stays."""
    saved = {p: p.read_bytes() if p.is_file() else None for p in paths}
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
        staged_now = _staged(watched)
        if staged_before is not None and staged_now:
            added = sorted(staged_now - staged_before)
            if added:
                subprocess.run(["git", "reset", "-q", "--", *added], capture_output=True)
