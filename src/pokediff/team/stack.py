"""The team's servers on one machine: to try the team set-up, and what the tests run for real.

    python -m pokediff.team stack up         (make team-up: starts what is not running; idempotent)
    python -m pokediff.team stack down       (make team-down: stops what runs; idempotent)
    python -m pokediff.team stack status
    python -m pokediff.team stack start|stop|restart SERVICE   postgres, mlflow or prefect alone
    python -m pokediff.team stack add-user NAME   an MLflow login for a teammate or a worker

What runs (docs/team.md shows the same layout on separate hosts):
    PostgreSQL       a cluster in <state>/postgres, run by an unprivileged user (it refuses root: as root
                     the system user `pokediff-pg` is created and used), listening on 127.0.0.1 only
    MLflow server    on PostgreSQL; artifacts proxied (--serve-artifacts: clients use mlflow-artifacts:
                     URIs and never see <state>/mlflow/artifacts); basic-auth login (--app-name
                     basic-auth; its users in its own SQLite database, named in basic_auth.ini)
    Prefect server   on PostgreSQL; every API call needs the auth string (server.api.auth_string)
    DVC remote       the folder <state>/dvc-remote
    git remote       the bare repository <state>/git/pokediff.git

State, all in one git-ignored folder (default .team/ in the project root):
    secrets/         mode 0700: generated passwords (database roles, MLflow admin, its session key, the
                     Prefect auth string) and users/NAME.env for each added login
    stack.json       host and ports (kept, so a restart keeps every URL) and the servers' pids
    client.env       what a client on this machine needs (a team.env with the admin login):
                     `cp .team/client.env team.env` or `export POKEDIFF_TEAM_ENV=.team/client.env`

Passwords never appear on a command line (ps shows those): the servers get them from their environment
(PGPASSWORD, MLFLOW_AUTH_ADMIN_PASSWORD, PREFECT_SERVER_API_AUTH_STRING), psql from its stdin.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pokediff.errors import PokediffError
from pokediff.locks import pid_alive

PG_SYSTEM_USER = "pokediff-pg"
MLFLOW_ADMIN = "admin"
PREFECT_USER = "pokediff"
START_TIMEOUT_S = 300.0  # a first start migrates two databases; a busy 2-core machine needs minutes
STOP_TIMEOUT_S = 30.0
SERVICES = ("postgres", "mlflow", "prefect")
# Each logged-in user may create and edit runs, experiments and models (a small team's default; READ makes
# every grant explicit: docs/team.md).
MLFLOW_DEFAULT_PERMISSION = "EDIT"


class StackError(PokediffError):
    """The stack cannot start or stop (one line: what, and which file or log to look at)."""


@dataclass
class Ports:
    postgres: int
    mlflow: int
    prefect: int


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def postgres_bin() -> Path:
    """The folder of initdb/pg_ctl/psql: POKEDIFF_PG_BIN, else Debian's newest /usr/lib/postgresql/N/bin,
    else the folder of pg_ctl on PATH."""
    named = os.environ.get("POKEDIFF_PG_BIN")
    candidates = [Path(named)] if named else sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                                                     key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
                                                     reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path and not named:
        candidates.append(Path(on_path).parent)
    for folder in candidates:
        if (folder / "pg_ctl").is_file() and (folder / "initdb").is_file():
            return folder
    raise StackError("PostgreSQL not found: install Debian's `postgresql` package (initdb, pg_ctl) or set "
                     "POKEDIFF_PG_BIN to the folder holding them")


class Stack:
    """One machine's team servers, their state in ``state`` (see the module docstring)."""

    def __init__(self, state: str | Path, host: str = "127.0.0.1", log=None):
        self.state = Path(state).resolve()
        self.host = host
        self.log = log or (lambda line: print(line, file=sys.stderr))
        self.secrets_dir = self.state / "secrets"
        self.pg_dir = self.state / "postgres"
        self.mlflow_dir = self.state / "mlflow"
        self.prefect_dir = self.state / "prefect"
        self.dvc_remote = self.state / "dvc-remote"
        self.git_remote = self.state / "git" / "pokediff.git"
        self.client_env = self.state / "client.env"
        self.info_file = self.state / "stack.json"

    # ------------------------------------------------------------------------------------------
    # Public
    # ------------------------------------------------------------------------------------------
    def up(self) -> dict[str, str]:
        """Start whatever is not running (first time: create the cluster, databases, passwords, folders).
        Returns the client settings (also written to client.env)."""
        self._prepare()
        ports = self._ports()
        self._start_postgres(ports)
        self._start_mlflow(ports)
        self._start_prefect(ports)
        self.dvc_remote.mkdir(parents=True, exist_ok=True)
        if not (self.git_remote / "HEAD").is_file():
            self.git_remote.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(self.git_remote)], check=True)
        settings = self.client_settings(ports)
        _write_private(self.client_env, "".join(f"{k}={v}\n" for k, v in settings.items()))
        return settings

    def down(self) -> list[str]:
        """Stop the servers (Prefect, MLflow, then PostgreSQL). Returns what was stopped."""
        stopped = [name for name in ("prefect", "mlflow") if self.stop_service(name)]
        if self.stop_service("postgres"):
            stopped.append("postgres")
        return stopped

    def status(self) -> dict[str, bool]:
        info = self._info()
        return {"postgres": self._postgres_running(),
                "mlflow": self._server_alive(info.get("pids", {}).get("mlflow")),
                "prefect": self._server_alive(info.get("pids", {}).get("prefect"))}

    def stop_service(self, name: str) -> bool:
        """Stop one server (for `down`, and for the tests' restarts). False when it was not running."""
        if name == "postgres":
            if not self._postgres_running():
                return False
            self._pg([str(postgres_bin() / "pg_ctl"), "-D", str(self.pg_dir / "data"), "-m", "fast", "-w",
                      "-t", str(int(STOP_TIMEOUT_S)), "stop"], check=True)
            return True
        info = self._info()
        pid = info.get("pids", {}).get(name)
        if not self._server_alive(pid):
            return False
        _stop_group(pid)
        info["pids"].pop(name, None)
        self._save_info(info)
        return True

    def start_service(self, name: str) -> None:
        ports = self._ports()
        {"postgres": self._start_postgres, "mlflow": self._start_mlflow, "prefect": self._start_prefect}[name](ports)

    def add_user(self, name: str) -> Path:
        """An MLflow login NAME with a generated password -> secrets/users/NAME.env (mode 0600), which
        holds MLFLOW_TRACKING_USERNAME/PASSWORD for that person's or worker's team.env. Idempotent."""
        if not name.replace("-", "").replace("_", "").isalnum():
            raise StackError(f"user name {name!r}: letters, digits, - and _ only")
        path = self.secrets_dir / "users" / f"{name}.env"
        if path.is_file():
            return path
        password = secrets.token_urlsafe(18)
        status, body = self._mlflow_admin("POST", "/api/2.0/mlflow/users/create",
                                          {"username": name, "password": password})
        if status != 200:
            raise StackError(f"MLflow refused to create user {name!r}: HTTP {status} {body[:200]}")
        path.parent.mkdir(mode=0o700, exist_ok=True)
        _write_private(path, f"MLFLOW_TRACKING_USERNAME={name}\nMLFLOW_TRACKING_PASSWORD={password}\n")
        return path

    def client_settings(self, ports: Ports | None = None) -> dict[str, str]:
        ports = ports or self._ports()
        return {
            "MLFLOW_TRACKING_URI": f"http://{self.host}:{ports.mlflow}",
            "MLFLOW_TRACKING_USERNAME": MLFLOW_ADMIN,
            "MLFLOW_TRACKING_PASSWORD": self._secret("mlflow-admin"),
            "PREFECT_API_URL": f"http://{self.host}:{ports.prefect}/api",
            "PREFECT_API_AUTH_STRING": f"{PREFECT_USER}:{self._secret('prefect-auth')}",
            "POKEDIFF_DVC_REMOTE": str(self.dvc_remote),
            "POKEDIFF_GIT_REMOTE": str(self.git_remote),
        }

    # ------------------------------------------------------------------------------------------
    # State
    # ------------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        self.secrets_dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.secrets_dir, 0o700)
        for name in ("pg-mlflow", "pg-prefect", "prefect-auth", "mlflow-session-key"):
            self._secret(name)
        self._secret("mlflow-admin", length=18)  # MLflow wants at least 12 characters

    def _secret(self, name: str, length: int = 24) -> str:
        """secrets/<name>, made on first use (URL-safe characters: they go into URLs and auth strings)."""
        path = self.secrets_dir / name
        if not path.is_file():
            _write_private(path, secrets.token_urlsafe(length))
        return path.read_text().strip()

    def _info(self) -> dict:
        try:
            return json.loads(self.info_file.read_text())
        except (OSError, ValueError):
            return {}

    def _save_info(self, info: dict) -> None:
        tmp = self.info_file.with_name(".stack.json.tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, self.info_file)

    def _ports(self) -> Ports:
        """The ports of the first `up`, kept in stack.json (a restart keeps every URL valid)."""
        info = self._info()
        if info.get("host") not in (None, self.host):
            raise StackError(f"{self.info_file}: this stack serves on {info['host']}, not {self.host}; "
                             f"`stack down` and remove {self.info_file} to move it")
        if "ports" not in info:
            info.update(host=self.host, ports={"postgres": free_port("127.0.0.1"), "mlflow": free_port(self.host),
                                               "prefect": free_port(self.host)}, pids={})
            self._save_info(info)
        return Ports(**info["ports"])

    # ------------------------------------------------------------------------------------------
    # PostgreSQL
    # ------------------------------------------------------------------------------------------
    def _pg_user(self) -> str | None:
        """The user PostgreSQL runs as: None (this user) unless root, then PG_SYSTEM_USER (created once)."""
        if os.geteuid() != 0:
            return None
        if subprocess.run(["id", "-u", PG_SYSTEM_USER], capture_output=True).returncode != 0:
            made = subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                                   "--shell", "/usr/sbin/nologin", PG_SYSTEM_USER], capture_output=True, text=True)
            exists = subprocess.run(["id", "-u", PG_SYSTEM_USER], capture_output=True).returncode == 0
            if made.returncode != 0 and not exists:  # (a concurrent `up` may have made it meanwhile)
                raise StackError(f"cannot create the system user {PG_SYSTEM_USER} for PostgreSQL (it refuses "
                                 f"root): {made.stderr.strip()[:200]}")
        return PG_SYSTEM_USER

    def _pg(self, cmd: list[str], *, check: bool = False, stdin: str | None = None) -> subprocess.CompletedProcess:
        user = self._pg_user()
        full = ["runuser", "-u", user, "--", *cmd] if user else cmd
        out = subprocess.run(full, input=stdin, capture_output=True, text=True, cwd=self.pg_dir,
                             env={**os.environ, "LC_ALL": "C.UTF-8"})
        if check and out.returncode != 0:
            last = (out.stderr.strip() or out.stdout.strip()).splitlines()[-1:] or [""]
            raise StackError(f"`{Path(cmd[0]).name} {' '.join(cmd[1:3])}` failed: {last[0][:300]} "
                             f"(log: {self.pg_dir / 'postgres.log'})")
        return out

    def _postgres_running(self) -> bool:
        if not (self.pg_dir / "data" / "PG_VERSION").is_file():
            return False
        return self._pg([str(postgres_bin() / "pg_ctl"), "-D", str(self.pg_dir / "data"), "status"]).returncode == 0

    def _start_postgres(self, ports: Ports) -> None:
        bin_dir = postgres_bin()
        user = self._pg_user()
        self.pg_dir.mkdir(mode=0o700, exist_ok=True)
        if user:
            shutil.chown(self.pg_dir, user)
            if self._pg(["test", "-w", str(self.pg_dir)]).returncode != 0:
                raise StackError(f"{self.pg_dir}: the PostgreSQL user {user} cannot reach it; make its parent "
                                 "folders searchable by others (chmod o+x) or put the state folder elsewhere")
        data = self.pg_dir / "data"
        if not (data / "PG_VERSION").is_file():
            self._pg([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8",
                      "--auth-local=trust", "--auth-host=scram-sha-256", "--no-instructions"], check=True)
            self.log(f"postgres: new cluster in {data}")
        if not self._postgres_running():
            # Only on 127.0.0.1 (the servers beside it connect there) and on a socket in its own 0700 folder.
            options = f"-p {ports.postgres} -k {self.pg_dir} -h 127.0.0.1"
            self._pg([str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(self.pg_dir / "postgres.log"),
                      "-w", "-t", str(int(START_TIMEOUT_S)), "start"], check=True)
            self.log(f"postgres: running on 127.0.0.1:{ports.postgres}")
        for role in ("mlflow", "prefect"):
            self._ensure_database(bin_dir, ports, role, self._secret(f"pg-{role}"))

    def _ensure_database(self, bin_dir: Path, ports: Ports, name: str, password: str) -> None:
        """Role NAME (login, the password) owning database NAME; created when missing."""
        psql = [str(bin_dir / "psql"), "-h", str(self.pg_dir), "-p", str(ports.postgres), "-U", "postgres",
                "-v", "ON_ERROR_STOP=1", "-q", "-tA"]
        found = self._pg([*psql, "-c", f"SELECT 1 FROM pg_roles WHERE rolname = '{name}'"], check=True)
        if found.stdout.strip() != "1":
            # The password goes through stdin, never a command line.
            self._pg([*psql, "-f", "-"], check=True,
                     stdin=f"CREATE ROLE {name} LOGIN PASSWORD '{password}';\n")
        found = self._pg([*psql, "-c", f"SELECT 1 FROM pg_database WHERE datname = '{name}'"], check=True)
        if found.stdout.strip() != "1":
            self._pg([*psql, "-c", f"CREATE DATABASE {name} OWNER {name}"], check=True)

    # ------------------------------------------------------------------------------------------
    # MLflow and Prefect servers
    # ------------------------------------------------------------------------------------------
    def _server_alive(self, pid: int | None) -> bool:
        """Our server with this pid is running (the pid's command line names this state folder)."""
        if not pid or not pid_alive(pid):
            return False
        try:
            return str(self.state) in Path(f"/proc/{pid}/environ").read_bytes().decode("utf-8", "replace")
        except OSError:
            return False

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path, health: str) -> None:
        info = self._info()
        if self._server_alive(info.get("pids", {}).get(name)) and _http_ok(health):
            return
        log = cwd / f"{name}-server.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**_server_base_env(), **env, "POKEDIFF_STACK_STATE": str(self.state)},
                                    start_new_session=True)  # its own process group: `down` stops it whole
        info.setdefault("pids", {})[name] = proc.pid
        self._save_info(info)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _http_ok(health):
            if proc.poll() is not None:
                raise StackError(f"{name} server exited with code {proc.returncode} at start; see {log}")
            if time.monotonic() > deadline:
                _stop_group(proc.pid)
                raise StackError(f"{name} server did not answer {health} within {START_TIMEOUT_S:.0f} s; see {log}")
            time.sleep(0.5)
        self.log(f"{name}: running on {health.rsplit('/', 1)[0]}")

    def _start_mlflow(self, ports: Ports) -> None:
        self.mlflow_dir.mkdir(exist_ok=True)
        (self.mlflow_dir / "artifacts").mkdir(exist_ok=True)
        ini = self.mlflow_dir / "basic_auth.ini"
        ini.write_text(
            "# MLflow's login (mlflow server --app-name basic-auth), written by `pokediff.team stack up`.\n"
            "# The admin's first password comes from MLFLOW_AUTH_ADMIN_PASSWORD (secrets/mlflow-admin).\n"
            "[mlflow]\n"
            f"default_permission = {MLFLOW_DEFAULT_PERMISSION}\n"
            f"database_uri = sqlite:///{self.mlflow_dir / 'basic_auth.db'}\n"
            f"admin_username = {MLFLOW_ADMIN}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", self.host, "--port", str(ports.mlflow),
               "--workers", "1",
               # no password in the URI (ps would show it): libpq reads PGPASSWORD
               "--backend-store-uri", f"postgresql://mlflow@127.0.0.1:{ports.postgres}/mlflow",
               "--serve-artifacts", "--artifacts-destination", str(self.mlflow_dir / "artifacts"),
               "--app-name", "basic-auth"]
        env = {"PGPASSWORD": self._secret("pg-mlflow"), "MLFLOW_AUTH_CONFIG_PATH": str(ini),
               "MLFLOW_AUTH_ADMIN_PASSWORD": self._secret("mlflow-admin"),
               "MLFLOW_FLASK_SERVER_SECRET_KEY": self._secret("mlflow-session-key"),
               "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # GenAI job runners: 1.5 GB we do not use
        self._spawn("mlflow", cmd, env, self.mlflow_dir, f"http://{self.host}:{ports.mlflow}/health")

    def _start_prefect(self, ports: Ports) -> None:
        home = self.prefect_dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", self.host, "--port", str(ports.prefect)]
        env = {"PREFECT_HOME": str(home), "PGPASSWORD": self._secret("pg-prefect"),
               "PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://prefect@127.0.0.1:{ports.postgres}/prefect",
               "PREFECT_SERVER_API_AUTH_STRING": f"{PREFECT_USER}:{self._secret('prefect-auth')}"}
        self._spawn("prefect", cmd, env, self.prefect_dir, f"http://{self.host}:{ports.prefect}/api/health")

    def _mlflow_admin(self, method: str, path: str, body: dict) -> tuple[int, str]:
        ports = self._ports()
        token = base64.b64encode(f"{MLFLOW_ADMIN}:{self._secret('mlflow-admin')}".encode()).decode()
        headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
        request = urllib.request.Request(f"http://{self.host}:{ports.mlflow}{path}", method=method,
                                         data=json.dumps(body).encode(), headers=headers)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=30) as response:
                return response.status, response.read(1 << 16).decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(1 << 16).decode("utf-8", "replace")
        except OSError as exc:
            raise StackError(f"MLflow server on port {ports.mlflow} does not answer ({exc}); `stack up` first") \
                from None


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
def _server_base_env() -> dict[str, str]:
    """The caller's environment minus its own team settings (a server needs none of a client's logins)."""
    from pokediff.env import OFFLINE_DEFAULTS
    from pokediff.team.settings import SETTINGS

    client_only = ("PREFECT_API_", "PREFECT_HOME", "PREFECT_PROFILE", "PREFECT_CLIENT_")  # server settings pass
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS and not k.startswith(client_only)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return {**OFFLINE_DEFAULTS, **env}


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (created 0600, never briefly wider)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _http_ok(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=3) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def _stop_group(pgid: int) -> None:
    """SIGTERM the server's process group, SIGKILL what is left after STOP_TIMEOUT_S."""
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(pgid)
            if not _group_alive(pgid):
                return
            time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running (zombies waiting to be reaped do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "(comm)": state ppid pgrp ...
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _reap(pid: int) -> None:
    """Collect our own child's exit status (when this process started it), so it leaves no zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
