"""The MLflow store: where it is, the experiment, the registered model's name, provenance tags, and
the small helpers every tracking module shares (run info file, metric cleaning, error wording)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import mlflow
from mlflow.exceptions import MlflowException

from pokediff.config import parse_yaml
from pokediff.errors import PokediffError, shorten
from pokediff.limits import read_json_text
from pokediff.team.settings import named, redact_url

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"  # relative to the project root (see project_root)
STORE_DIR = "mlruns"
ARTIFACT_ROOT = Path(STORE_DIR) / "artifacts"
EXPERIMENT_NAME = "pokediff"
MODEL_NAME = "pokemon-ddpm"  # the registered model: one version per training run
RUN_INFO_FILE = "mlflow_run.json"
# Links to the orchestrators that started a run (set by the Prefect flow and by `dvc exp run`).
LINK_ENV = {"POKEDIFF_FLOW_RUN_ID": "pokediff.prefect_flow_run_id", "DVC_EXP_NAME": "pokediff.dvc_exp_name"}
# What marks the project root: the folder `pokediff` walks up to from the working directory.
PROJECT_MARKERS = ("dvc.yaml", "params.yaml", ".dvc")
# MLflow 3's UI opens an experiment on its GenAI overview unless the experiment says it is for model
# training (read by the UI from this tag; "custom_model_development" is its model-training kind).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# A saved view of the runs table with FID, KID, loss and the sampler as columns, best FID first. The UI
# loads it from this experiment tag when opened with ?viewStateShareKey=pokediff (its "Share" feature;
# plain JSON is accepted there), e.g. http://127.0.0.1:5000/#/experiments/1/runs?viewStateShareKey=pokediff
RUNS_VIEW_KEY = "pokediff"
RUNS_VIEW_TAG = f"mlflow.sharedViewState.{RUNS_VIEW_KEY}"
RUNS_VIEW = {
    "searchFilter": "", "orderByKey": "metrics.`fid`", "orderByAsc": True,
    "selectedColumns": ["metrics.`fid`", "metrics.`kid_mean`", "metrics.`loss`", "params.`sample.sampler`",
                        "params.`sample.steps`", "params.`diffusion.schedule`", "params.`train.steps`",
                        "tags.`pokediff.eval_key`"],
}
# An MLflow server that does not answer must cost seconds, not MLflow's default of 7 retries with
# exponential back-off and 120 s timeouts (about 4 minutes before the first error).
PROBE_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


EXPERIMENT_TAGS = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, RUNS_VIEW_TAG: json.dumps(RUNS_VIEW)}


class TrackingError(PokediffError):
    """The MLflow store cannot be found or reached (one line, with what to do)."""


# ----------------------------------------------------------------------------------------------
# Store set-up and provenance
# ----------------------------------------------------------------------------------------------
def project_root(start: str | Path | None = None) -> Path | None:
    """The nearest folder at or above ``start`` (default: the working directory) holding dvc.yaml,
    params.yaml or .dvc/, i.e. the pokediff project that `pokediff` runs in; None outside one."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if any((folder / marker).exists() for marker in PROJECT_MARKERS):
            return folder
    return None


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else the project's SQLite store (absolute, so `pokediff` finds the
    same store from any sub-folder). Outside a project with no MLFLOW_TRACKING_URI: TrackingError,
    raised before anything is written (no stray mlruns/)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri and uri != _project_uri_set:
        return uri
    root = project_root()
    if root is None:
        raise TrackingError(
            f"no MLflow store: {Path.cwd()} is not inside a pokediff project (no "
            f"{', '.join(PROJECT_MARKERS)} here or above); run inside the project or set MLFLOW_TRACKING_URI")
    return f"sqlite:///{root / STORE_DIR / 'mlflow.db'}"


@contextlib.contextmanager
def quick_http(env: dict[str, str] = PROBE_ENV):
    """MLflow HTTP settings for a call that must fail fast; a value the user set is kept."""
    saved = {key: os.environ.get(key) for key in env}
    for key, value in env.items():
        os.environ.setdefault(key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI (for subprocesses): remember the project
# URI this process set, so that it is not mistaken for the user's choice on the next configure().
_project_uri_set: str | None = None


def configure(experiment: str = EXPERIMENT_NAME) -> str:
    """Point MLflow at the project store (or MLFLOW_TRACKING_URI) and make sure the experiment exists.

    With the embedded SQLite store, artifacts go to mlruns/artifacts next to the database, so the whole
    store is one git-ignored folder of the project. A server that does not answer fails here within
    seconds (TrackingError). Returns the experiment id."""
    global _project_uri_set
    user_uri = os.environ.get("MLFLOW_TRACKING_URI")
    uri = tracking_uri()
    local = uri != user_uri
    if local:
        store = Path(uri.removeprefix("sqlite:///"))
        store.parent.mkdir(exist_ok=True)
        _project_uri_set = uri
    if uri.startswith("sqlite:///"):
        check_sqlite_store(Path(uri.removeprefix("sqlite:///")))
    mlflow.set_tracking_uri(uri)
    try:
        with quick_http():
            found = mlflow.get_experiment_by_name(experiment)
    except Exception as exc:  # requests' ConnectionError, MlflowException, OSError, ...
        raise TrackingError(_store_failure(uri, exc)) from None
    if found is not None:
        if local:
            _relocate_if_moved(store, found.artifact_location)
        return mlflow.set_experiment(experiment).experiment_id
    location = (store.parent / "artifacts").as_uri() if local else None
    try:
        experiment_id = mlflow.create_experiment(experiment, artifact_location=location, tags=EXPERIMENT_TAGS)
    except MlflowException:  # created meanwhile by a concurrent stage
        experiment_id = mlflow.get_experiment_by_name(experiment).experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


SQLITE_PROBE_SECONDS = 30  # a concurrent stage may hold the write lock for a commit


def check_sqlite_store(store: Path) -> None:
    """Open the SQLite file of an MLflow store directly, in seconds, before MLflow does: MLflow retries a
    database it cannot open for about two minutes, logging a warning of several lines per attempt.
    TrackingError (one line) when it is not a file, not an SQLite database or cannot be opened; a
    missing file is created empty (MLflow creates its tables in it)."""
    if store.exists() and not store.is_file():
        raise TrackingError(f"MLflow store {store} is not a file; move it away or set MLFLOW_TRACKING_URI, "
                            "or pass --no-track")
    try:
        with contextlib.closing(sqlite3.connect(f"{store.resolve().as_uri()}?mode=rwc", uri=True,
                                                timeout=SQLITE_PROBE_SECONDS)) as db:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise TrackingError(f"MLflow store {store} cannot be opened ({shorten(str(exc), 120)}); move it away to "
                            "start a new store, set MLFLOW_TRACKING_URI, or pass --no-track") from None


def error_words(exc: BaseException) -> str:
    """A few words for an MLflow failure: MLflow wraps connection errors in long nested messages."""
    text = " ".join(str(e) for e in (exc, exc.__cause__, exc.__context__) if e is not None)
    for needle, words in (("Connection refused", "connection refused"), ("timed out", "timed out"),
                          ("Max retries exceeded", "the server does not answer"),
                          ("Name or service not known", "unknown host"), ("RemoteDisconnected", "server went away"),
                          ("database is locked", "database is locked"), ("No space left", "disk full")):
        if needle in text:
            return words
    return shorten((str(exc).strip().splitlines() or [type(exc).__name__])[0], 200)


def link_tags() -> dict[str, str]:
    """Tags that tie a run to the Prefect flow run and the DVC experiment that produced it."""
    return {tag: os.environ[var] for var, tag in LINK_ENV.items() if os.environ.get(var)}


def _store_failure(uri: str, exc: BaseException) -> str:
    """One line for a store that refused or did not answer: the setting to fix, no secret (the URI is
    shown without any user:password part)."""
    shown = redact_url(uri)
    code = getattr(exc, "error_code", None)
    if code == "UNAUTHENTICATED":
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        if not user:
            return (f"{named('MLFLOW_TRACKING_USERNAME')}: not set, and the MLflow server {shown} asks for a login; "
                    "set it and MLFLOW_TRACKING_PASSWORD (environment or team.env), or pass --no-track")
        return (f"{named('MLFLOW_TRACKING_PASSWORD')}: the MLflow server {shown} refused the login of user "
                f"{user!r}; fix MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, or pass --no-track")
    if code == "PERMISSION_DENIED":
        return (f"{named('MLFLOW_TRACKING_USERNAME')}: user {os.environ.get('MLFLOW_TRACKING_USERNAME')!r} may not "
                f"use experiment {EXPERIMENT_NAME!r} on {shown}; ask the server's admin for access")
    return (f"MLflow store {shown} not reachable ({error_words(exc)}); start the server, unset "
            "MLFLOW_TRACKING_URI to use the project store, or pass --no-track")



def _relocate_if_moved(store: Path, artifact_location: str) -> None:
    """Make a copied or moved project write into its own mlruns/.

    MLflow stores absolute artifact locations (it resolves every local path when an experiment is
    created), so a copied mlruns/mlflow.db still points at the original project's mlruns/artifacts.
    The store's own artifact root is always <store folder>/artifacts: when the recorded one differs,
    rewrite that prefix in the SQLite file (every text column of every table that holds it: the
    experiment, its runs, logged models, model versions) so that new runs and the copied old ones
    both resolve inside this project."""
    wanted = (store.parent / "artifacts").as_uri()
    if not artifact_location.startswith("file:") or artifact_location == wanted:
        return
    old_uri = artifact_location.rstrip("/")
    if not old_uri.endswith("/artifacts"):  # not a store that pokediff made: leave it alone
        return
    old_path = old_uri.removeprefix("file://")
    new_path = wanted.removeprefix("file://")
    # The path appears bare and inside file:// URIs (percent-encoded there): replace both spellings.
    pairs = {(old_path, new_path), (unquote(old_path), unquote(new_path))}
    with contextlib.closing(sqlite3.connect(store, timeout=30)) as db, db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for _, column, kind, *_ in db.execute(f'PRAGMA table_info("{table}")').fetchall():
                if "CHAR" in kind.upper() or "TEXT" in kind.upper():
                    for old, new in pairs:
                        db.execute(f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                                   f'WHERE instr("{column}", ?) > 0', (old, new, old))
    print(f"pokediff: the MLflow store was moved or copied from {old_path.removesuffix('/artifacts')}; "
          f"its artifact paths now point into {new_path}", file=sys.stderr)


def git_commit(cwd: str | Path | None = None) -> str:
    """HEAD's commit, with "-dirty" when tracked files differ from it; "unknown" outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=cwd).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True, cwd=cwd).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def dvc_data_hash(dvc_file: str | Path = "data.dvc") -> str:
    """The md5 that data.dvc pins for data/ (what the raw source was), or "unknown"."""
    try:  # the bounded loader: no aliases, no deep nesting (a .dvc file has neither)
        outs = parse_yaml(_read_small(Path(dvc_file)) or "")["outs"]
        return str(outs[0]["md5"])
    except (OSError, KeyError, IndexError, TypeError, ValueError):
        return "unknown"


def dataset_md5(root: Path | None, dataset_dir: Path) -> str | None:
    """DVC's md5 of <dataset_dir>/images as recorded in dvc.lock (what the train stage read), or None."""
    if root is None:
        return None
    lock = _read_small(root / "dvc.lock")
    try:
        stages = parse_yaml(lock)["stages"] if lock else {}
        wanted = (dataset_dir.resolve() / "images").relative_to(root).as_posix()
        for stage in stages.values():
            for out in stage.get("outs", []):
                if out.get("path") == wanted and out.get("md5"):
                    return str(out["md5"])
    except (KeyError, TypeError, ValueError, AttributeError):
        pass
    return None


MAX_SMALL_FILE = 10 << 20  # JSON summaries, dvc.lock, data.dvc: far below this; bigger is not ours


def _read_small(path: Path, limit: int = MAX_SMALL_FILE) -> str | None:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError:
        return None
    return data.decode("utf-8", "replace") if len(data) <= limit else None


def read_json(path: Path) -> dict[str, Any]:
    text = _read_small(Path(path))
    try:
        value = read_json_text(text, str(path)) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def finite_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Numbers only (MLflow rejects None and strings; NaN is noise in the UI), under names MLflow
    accepts (free-text keys such as ingest's ignore reasons get their odd characters replaced)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[_METRIC_NAME_UNSAFE.sub("_", key)] = float(value)
    return out


_METRIC_NAME_UNSAFE = re.compile(r"[^0-9A-Za-z_\-. :/]")


def read_run_info(train_out_dir: str | Path) -> dict[str, Any]:
    path = Path(train_out_dir) / RUN_INFO_FILE
    info = read_json(path)
    if not info.get("run_id"):
        raise FileNotFoundError(f"{path}: no MLflow run recorded; run `pokediff train` first")
    return info
