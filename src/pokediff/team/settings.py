"""A machine's team settings: which MLflow server, Prefect server, DVC remote and git remote this machine
uses, and its credentials for them. One place, read the same way by every entry point (the `pokediff`
CLI, the Prefect flows, the Makefile's team targets, workers):

    1. the environment (a value set there always wins), then
    2. the file named by POKEDIFF_TEAM_ENV, else ``team.env`` in the project root (git-ignored).

Nothing configured anywhere = the embedded defaults, untouched: MLflow in mlruns/ (SQLite), Prefect's
temporary server, DVC's local cache.

team.env is ``KEY=VALUE`` lines (``#`` comments, optional quotes around VALUE, no shell expansion), only
the keys in SETTINGS. It holds passwords, so it should be readable by its owner alone (chmod 600); they
go nowhere else: not into git, MLflow params, Prefect parameters or logs (messages here name a setting,
never print its value, and show URLs without any user:password part).
"""

from __future__ import annotations

import base64
import os
import stat
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pokediff.errors import PokediffError

ENV_FILE_VAR = "POKEDIFF_TEAM_ENV"
ENV_FILE_NAME = "team.env"
MAX_FILE_BYTES = 64 << 10
PROBE_TIMEOUT_S = 5.0

# name -> what it is (the docs' table of a machine's settings comes from the same list)
SETTINGS: dict[str, str] = {
    "MLFLOW_TRACKING_URI": "the team's MLflow server, e.g. http://mlflow-host:5000",
    "MLFLOW_TRACKING_USERNAME": "this machine's MLflow login",
    "MLFLOW_TRACKING_PASSWORD": "its password",
    "PREFECT_API_URL": "the team's Prefect API, e.g. http://prefect-host:4200/api",
    "PREFECT_API_AUTH_STRING": "the Prefect server's basic-auth string, user:password",
    "POKEDIFF_DVC_REMOTE": "the team's DVC remote: a shared folder, ssh://host/path or s3://bucket/path",
    "POKEDIFF_GIT_REMOTE": "the team's git remote, as this machine reaches it (workers clone it; "
                           "experiments are pushed there)",
    "AWS_ACCESS_KEY_ID": "S3 remote only: the key id",
    "AWS_SECRET_ACCESS_KEY": "S3 remote only: the secret",
    "AWS_ENDPOINT_URL": "S3-compatible remote only (MinIO, Ceph): its endpoint",
}
SECRETS = frozenset({"MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING", "AWS_SECRET_ACCESS_KEY"})
# Where each setting came from in this process ("environment" or the file's path), for messages.
_sources: dict[str, str] = {}


class TeamSettingsError(PokediffError):
    """A team setting is malformed, or the server it names refuses or does not answer (one line)."""


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------
def env_file(start: str | Path | None = None) -> Path | None:
    """POKEDIFF_TEAM_ENV if set (it must exist), else <project root>/team.env if it exists, else None."""
    named = os.environ.get(ENV_FILE_VAR)
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise TeamSettingsError(f"{ENV_FILE_VAR}={named}: no such file")
        return path
    root = project_root(start)
    if root is None or not (root / ENV_FILE_NAME).is_file():
        return None
    return root / ENV_FILE_NAME


def project_root(start: str | Path | None = None) -> Path | None:
    """The nearest folder at or above ``start`` (default: the working directory) holding dvc.yaml,
    params.yaml or .dvc/ (as pokediff.tracking finds the project, without importing MLflow)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if any((folder / marker).exists() for marker in ("dvc.yaml", "params.yaml", ".dvc")):
            return folder
    return None


def parse_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines -> dict; an unknown key or a malformed line is one error naming file and line."""
    data = path.read_bytes()[: MAX_FILE_BYTES + 1]
    if len(data) > MAX_FILE_BYTES:
        raise TeamSettingsError(f"{path}: larger than {MAX_FILE_BYTES} bytes; a settings file is a few lines")
    values: dict[str, str] = {}
    for number, raw in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise TeamSettingsError(f"{path}:{number}: expected KEY=VALUE")
        if key not in SETTINGS:
            raise TeamSettingsError(f"{path}:{number}: unknown setting {key!r} (known: {', '.join(SETTINGS)})")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def load(start: str | Path | None = None, warn=None) -> dict[str, str]:
    """Put the team settings into os.environ (a value already set there wins) and return {key: source}.

    Called first thing by every entry point; cheap (one small file), no network. A team.env that others
    can read gets one warning line (it holds passwords)."""
    path = env_file(start)
    for key in SETTINGS:
        if os.environ.get(key) and key not in _sources:
            _sources[key] = "environment"
    if path is None:
        return dict(_sources)
    values = parse_env_file(path)
    if values.keys() & SECRETS and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        (warn or _stderr)(f"pokediff: {path} holds passwords and others can read it: chmod 600 {path}")
    for key, value in values.items():
        if key not in os.environ:
            os.environ[key] = value
            _sources[key] = str(path)
    return dict(_sources)


def source(key: str) -> str:
    """Where a setting came from, for messages: "environment", a file path, or "not set"."""
    if key in _sources:
        return _sources[key]
    return "environment" if os.environ.get(key) else "not set"


def _stderr(line: str) -> None:
    import sys

    print(line, file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# Showing (never a secret)
# ----------------------------------------------------------------------------------------------
def redact_url(url: str) -> str:
    """The URL without its user:password part (http://u:p@host:5000/x -> http://host:5000/x)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def shown(key: str) -> str:
    """A setting's value as it may be printed: secrets as ***, URLs without credentials."""
    value = os.environ.get(key)
    if value is None:
        return "(not set)"
    if key in SECRETS:
        return "***"
    return redact_url(value) if "://" in value else value


def describe() -> list[str]:
    """One line per setting: name, value as shown, and where it came from."""
    return [f"{key:<26} {shown(key):<50} {source(key)}" for key in SETTINGS]


# ----------------------------------------------------------------------------------------------
# Checking: one HTTP request per server, a few seconds at most
# ----------------------------------------------------------------------------------------------
def named(key: str) -> str:
    """The setting's name with where it came from, for a message: 'KEY (from team.env)'."""
    where = source(key)
    return f"{key} (from {where})" if where != "not set" else key


def _get(url: str, headers: dict[str, str]) -> int:
    """HTTP status of a GET (no redirects followed, no proxy for the team's own hosts)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers=headers, method="GET")
    try:
        with opener.open(request, timeout=PROBE_TIMEOUT_S) as response:
            response.read(1 << 16)
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _unreachable(key: str, url: str, exc: BaseException) -> TeamSettingsError:
    reason = getattr(exc, "reason", exc)
    words = str(reason).strip() or type(exc).__name__
    for needle, short in (("refused", "connection refused"), ("timed out", "timed out"),
                          ("Name or service not known", "unknown host"), ("No route", "no route to host")):
        if needle in words:
            words = short
            break
    return TeamSettingsError(f"{named(key)}: {redact_url(url)} does not answer ({words[:120]})")


def check_mlflow() -> str | None:
    """None without a tracking server configured; else the server's URL once it accepted the login.

    Raises TeamSettingsError naming the setting: unreachable (MLFLOW_TRACKING_URI), login refused
    (MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_USERNAME when none is set)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        return None
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    headers = {}
    if user is not None or password is not None:
        token = base64.b64encode(f"{user or ''}:{password or ''}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        status = _get(url, headers)
    except (OSError, ValueError) as exc:
        raise _unreachable("MLFLOW_TRACKING_URI", uri, exc) from None
    if status == 401:
        if not user:
            raise TeamSettingsError(f"{named('MLFLOW_TRACKING_USERNAME')}: not set, and the MLflow server "
                                    f"{redact_url(uri)} asks for a login")
        raise TeamSettingsError(f"{named('MLFLOW_TRACKING_PASSWORD')}: the MLflow server {redact_url(uri)} "
                                f"refused the login of user {user!r}")
    if status == 403:
        raise TeamSettingsError(f"{named('MLFLOW_TRACKING_USERNAME')}: user {user!r} may not read experiments "
                                f"on {redact_url(uri)}")
    if status >= 400:
        raise TeamSettingsError(f"{named('MLFLOW_TRACKING_URI')}: {redact_url(uri)} answered HTTP {status}; "
                                "is it an MLflow server?")
    return redact_url(uri)


def check_prefect() -> str | None:
    """None without PREFECT_API_URL; else the API's URL once it accepted PREFECT_API_AUTH_STRING."""
    api = os.environ.get("PREFECT_API_URL", "")
    if not api:
        return None
    auth = os.environ.get("PREFECT_API_AUTH_STRING")
    headers = {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    try:
        status = _get(api.rstrip("/") + "/admin/version", headers)  # /health answers without a login
    except (OSError, ValueError) as exc:
        raise _unreachable("PREFECT_API_URL", api, exc) from None
    if status == 401:
        if not auth:
            raise TeamSettingsError(f"{named('PREFECT_API_AUTH_STRING')}: not set, and the Prefect server "
                                    f"{redact_url(api)} asks for one")
        raise TeamSettingsError(f"{named('PREFECT_API_AUTH_STRING')}: the Prefect server {redact_url(api)} "
                                "refused it")
    if status >= 400:
        raise TeamSettingsError(f"{named('PREFECT_API_URL')}: {redact_url(api)} answered HTTP {status}; "
                                "is it a Prefect API URL (ending in /api)?")
    return redact_url(api)


def require(*keys: str) -> None:
    """One line naming the first of ``keys`` that is not set."""
    for key in keys:
        if not os.environ.get(key):
            raise TeamSettingsError(f"{key}: not set ({SETTINGS[key]}); put it in {ENV_FILE_NAME} or the "
                                    "environment (docs/team.md)")
