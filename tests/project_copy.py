"""A checkout of this project, as `git clone` gives it, for tests that run DVC, Prefect or the team tools on it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from pokediff.stages.fetch_data import DATA_PINS

REPO = Path(__file__).resolve().parents[1]
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
# What a clone holds that the pipeline, the deployments and the team tools read (no outputs, no .venv).
PROJECT_FILES = ("dvc.yaml", "params.yaml", "data.dvc", "prefect.yaml", "prefect-team.yaml", "prefect.toml",
                 ".gitignore", ".dvcignore")
PROJECT_DIRS = ("src", "pipelines", "configs")


def pinned_tarballs() -> list[Path]:
    """The tarballs data.dvc pins (the sprites and the type labels), fetched once into the test cache."""
    cache = Path(os.environ.get("POKEDIFF_CACHE_DIR", Path.home() / ".cache" / "pokediff")) / "sprites"
    subprocess.run([sys.executable, "-m", "pokediff", "fetch-data", "--params", "none", "--raw-dir", str(cache)],
                   check=True, capture_output=True)
    return [cache / pin.tarball_name for pin in DATA_PINS]  # the cache may hold other files: name each


def project_checkout(dest: Path, *, data: bool = True) -> Path:
    """The project's files in ``dest``; with ``data``, data/ holds exactly what data.dvc pins (anything else
    there and `dvc commit data.dvc` would rewrite the pin)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        shutil.copy(REPO / name, dest / name)
    for name in PROJECT_DIRS:
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / ".dvc").mkdir()
    for name in ("config", ".gitignore"):
        shutil.copy(REPO / ".dvc" / name, dest / ".dvc" / name)
    if data:
        (dest / "data").mkdir()
        for tarball in pinned_tarballs():
            shutil.copy(tarball, dest / "data")
    return dest


def commit_all(dest: Path, message: str = "snapshot") -> None:
    """git init + commit everything in ``dest`` on main: a project whose commit a pipeline run records."""
    subprocess.run([*GIT, "init", "-q", "-b", "main"], cwd=dest, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*GIT, "commit", "-qm", message], cwd=dest, check=True)
