"""The team's DVC remote and git remote, as a checkout uses them: configure, pull inputs, push results.

    configure_dvc_remote(root)   POKEDIFF_DVC_REMOTE -> remote `team` in .dvc/config.local (git-ignored;
                                 credentials for it go there or in the environment, never in .dvc/config)
    pull_inputs(root)            `dvc pull --allow-missing`: data/ and whatever outputs of dvc.lock the
                                 remote holds (stages that match them are then skipped as up to date)
    deploy_commit(root)          the commit a deployment will run: committed, on the git remote, its
                                 data pushed; returns its sha (prefect-team.yaml's build step prints it)
    push_results(root, exp)      `dvc push` and `dvc exp push origin <exp>`: what a worker's run leaves
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pokediff.team.settings import TeamSettingsError, require

DVC_REMOTE_NAME = "team"
TIMEOUT_S = 1800  # a DVC transfer of a large model on a slow link; far above what the tests move


def _run(cmd: list[str], root: Path, what: str, timeout: float = TIMEOUT_S) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    try:
        out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TeamSettingsError(f"{what}: `{' '.join(cmd[:4])}` did not finish in {timeout:.0f} s") from None
    if out.returncode != 0:
        lines = [line for line in (out.stderr + out.stdout).splitlines() if line.strip()]
        raise TeamSettingsError(f"{what}: `{' '.join(cmd[:4])}` failed: {(lines[-1] if lines else '')[:300]}")
    return out.stdout


def dvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def configure_dvc_remote(root: str | Path = ".") -> str:
    """Make POKEDIFF_DVC_REMOTE this checkout's default DVC remote `team` (in .dvc/config.local)."""
    require("POKEDIFF_DVC_REMOTE")
    url = os.environ["POKEDIFF_DVC_REMOTE"]
    _run(dvc("remote", "add", "--local", "--force", "--default", DVC_REMOTE_NAME, url), Path(root),
         "POKEDIFF_DVC_REMOTE")
    return url


def pull_inputs(root: str | Path = ".") -> str:
    configure_dvc_remote(root)
    return _run(dvc("pull", "--allow-missing"), Path(root), "dvc pull from POKEDIFF_DVC_REMOTE")


def deploy_commit(root: str | Path = ".") -> str:
    """HEAD, once it is something a worker can run: no uncommitted changes to tracked files, the commit on
    a branch of a git remote (so a worker can clone it), and data.dvc's data in the DVC remote."""
    root = Path(root)
    if _run(["git", "status", "--porcelain", "--untracked-files=no"], root, "git status").strip():
        raise TeamSettingsError("uncommitted changes: a deployment runs a commit; commit (and push) them first")
    sha = _run(["git", "rev-parse", "HEAD"], root, "git rev-parse").strip()
    if not _run(["git", "branch", "-r", "--contains", sha], root, "git branch -r").strip():
        raise TeamSettingsError(f"commit {sha[:12]} is on no branch of a git remote: `git push` it first (workers "
                                "clone POKEDIFF_GIT_REMOTE at this commit)")
    configure_dvc_remote(root)
    if (root / "data.dvc").is_file():
        _run(dvc("push", "data.dvc"), root, "dvc push data.dvc to POKEDIFF_DVC_REMOTE")
    return sha


def push_results(root: str | Path, experiment: str | None) -> str:
    """Everything the run produced into the DVC remote; its experiment (git refs) to the git remote."""
    root = Path(root)
    configure_dvc_remote(root)
    log = _run(dvc("push"), root, "dvc push to POKEDIFF_DVC_REMOTE")
    if experiment:
        log += _run(dvc("exp", "push", "origin", experiment), root, "dvc exp push to the git remote (origin)")
    return log
