"""What the Prefect flows need from DVC and the shell: the stage list, a stage's status, running a
command with its output in the run's log, and keeping params.yaml / dvc.lock as the user left them.

Everything is read from DVC itself (its Python API and `--json` output), never from its prose.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from pokediff.env import OFFLINE_DEFAULTS
from pokediff.locks import pid_alive

PARAMS_FILE = Path("params.yaml")
LOCK_FILE = Path("dvc.lock")
# Copies of the files a run will put back, kept while it runs: a run killed before its `finally`
# (SIGKILL, power loss) is undone by the next one. Under DVC's own scratch folder (git-ignored).
JOURNAL_DIR = Path(".dvc/tmp/pokediff-restore")
MAX_JSON_BYTES = 10_000_000  # a DVC status / metrics answer or a metrics file larger than this is refused
TAIL_LINES = 30
# Colour and cursor codes (MLflow's warnings are yellow): a run's log is plain text.
ANSI_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
# What `dvc repro` tells a person at a terminal after every stage; the flow records the run itself
# (`dvc exp save`), so in its log these lines are noise.
DVC_ADVICE = re.compile(r"^\s*(To track the changes with git, run:|git add \S.*|To enable auto staging, run:"
                        r"|dvc config core\.autostage true"
                        r"|Use `dvc push` to send your updates to remote storage\.)\s*$")
STOP_WAIT_S = 20  # after an interrupt, how long a child gets to exit before it is killed


class StepFailed(RuntimeError):
    """A command failed; the message is one line (the command and its exit code), the tail is logged."""


def env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Subprocess environment: this interpreter's scripts first on PATH (pokediff, dvc), no telemetry."""
    out = {**OFFLINE_DEFAULTS, **os.environ, **(extra or {})}
    out["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{out.get('PATH', '')}"
    out.setdefault("PYTHONUNBUFFERED", "1")
    return out


def run_streaming(cmd: list[str], logger, extra_env: dict[str, str] | None = None,
                  drop: re.Pattern | None = None) -> None:
    """Run cmd in the project directory, each output line into ``logger`` as it comes (so `--watch`
    and the UI show the stage's own progress lines). Progress-bar redraws (\\r) and colour codes are
    dropped, and so are lines matching ``drop``. If this process is interrupted (Ctrl-C, or the SIGTERM
    of a Prefect cancellation), the child is stopped before the interrupt goes on, so nothing writes
    after the flow has given up on it."""
    logger.info("$ %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env(extra_env), errors="replace")
    tail: list[str] = []
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            line = ANSI_ESCAPE.sub("", raw.rstrip("\n"))
            if "\r" in line:  # a tqdm redraw: keep only its last frame
                line = line.rsplit("\r", 1)[-1]
            if not line.strip() or (drop is not None and drop.match(line)):
                continue
            logger.info(line[:2000])
            tail = (tail + [line])[-TAIL_LINES:]
    except BaseException:
        stop_process(proc)
        raise
    if proc.wait() != 0:
        logger.error("last lines of `%s`:\n%s", " ".join(cmd[:4]), "\n".join(tail))
        raise StepFailed(f"`{' '.join(cmd)}` failed with exit code {proc.returncode} (its output is in the log above)")


def stop_process(proc: subprocess.Popen, wait_s: float = STOP_WAIT_S) -> None:
    """SIGTERM, then SIGKILL after ``wait_s``: a child (dvc, and the stage under it) that the interrupt
    did not reach or did not stop. A no-op for a child that has already exited."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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


def locked_stages(lock: Path = LOCK_FILE) -> set[str] | None:
    """The stages dvc.lock records a run of (None: there is no dvc.lock, so nothing has run here yet)."""
    if not lock.is_file():
        return None
    if lock.stat().st_size > MAX_JSON_BYTES:
        raise StepFailed(f"{lock}: larger than {MAX_JSON_BYTES} bytes")
    try:
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages") or {}
    except (yaml.YAMLError, AttributeError):
        return set()  # unreadable: DVC will say what is wrong with it when the stage runs
    return set(stages) if isinstance(stages, dict) else set()


def why_stage_runs(stage: str, changes: list, max_names: int = 8) -> str:
    """Why DVC will run ``stage``: on a first run DVC reports every dependency as "modified" (there is
    nothing to compare with), so say that instead of listing them."""
    recorded = locked_stages()
    if recorded is None:
        return "first run (no dvc.lock)"
    if stage not in recorded:
        return "first run of this stage (dvc.lock has no entry for it)"
    return describe_changes(changes, max_names)


def repro_stage(stage: str, logger, extra_env: dict[str, str] | None = None) -> None:
    """`dvc repro --single-item <stage>`, its output in ``logger`` (without DVC's git advice). When it
    fails or this process is interrupted (KeyboardInterrupt, Prefect's TerminationSignal), the stage's
    previous outputs are put back (restore_outputs) before the exception goes on."""
    try:
        run_streaming(dvc("repro", "--single-item", stage), logger, extra_env, drop=DVC_ADVICE)
    except BaseException:
        restore_outputs(stage, logger)
        raise


def restore_outputs(stage: str, logger) -> None:
    """Put the outputs of ``stage`` back as dvc.lock records them, from the DVC cache.

    `dvc repro` deletes a stage's outputs before it runs the command, so a stage that fails or is
    interrupted would leave them missing (a cancelled run used to leave outputs/ref_stats deleted).
    Its dvc.lock entry still describes the previous outputs, which are in the cache: `dvc checkout`
    brings them back. Outputs declared `persist` were never deleted; `cache: false` ones cannot come
    back (they are small records that the stage writes again)."""
    recorded = locked_stages()
    if not recorded or stage not in recorded:
        return  # never ran here: there is nothing to put back
    out = subprocess.run(dvc("checkout", "--force", "--quiet", stage), capture_output=True, text=True, env=env())
    if out.returncode == 0:
        logger.warning("%s: outputs put back as dvc.lock records them (`dvc checkout %s`)", stage, stage)
    else:
        last = (out.stderr.strip() or out.stdout.strip()).splitlines()[-1:] or [""]
        logger.warning("%s: could not put the outputs back (`dvc checkout %s`: %s); `dvc repro %s` makes them "
                       "again", stage, stage, ANSI_ESCAPE.sub("", last[0])[:300], stage)


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


def experiments(prefix: str = "") -> list[str]:
    """Names of the experiments of the current commit (`dvc exp show`'s rows under HEAD), newest first."""
    answer = _json_out(dvc("exp", "show", "--json", "--hide-workspace"))
    found: list[tuple[str, str]] = []
    for baseline in answer if isinstance(answer, list) else []:
        for exp in (baseline or {}).get("experiments") or []:
            name = (exp or {}).get("name") or ""
            revs = exp.get("revs") or [{}]
            stamp = str(((revs[0] or {}).get("data") or {}).get("timestamp") or "")
            if name.startswith(prefix):
                found.append((stamp, name))
    return [name for _, name in sorted(found, reverse=True)]


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
