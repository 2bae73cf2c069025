"""Separate "hosts" on one machine for the team tests (tests/team/), and the team they make up.

Each host has its own folder, HOME, TMPDIR and environment (nothing of this test process's MLflow,
Prefect or team settings), and, where this machine allows it (root, iproute2), its own network namespace
with its own address on a private bridge: the server host's MLflow and Prefect are then reachable from
the other hosts only through that network, and not at all from this test process. Where namespaces are
not available every host uses 127.0.0.1 (one note is printed): the folders and environments stay apart.

What the hosts share is what a team shares: the git remote (a bare repository), the DVC remote (a
folder) and the two servers' URLs. Every process a host starts carries a marker in its environment, so
that "the host dies" can be done for real: SIGKILL to every process with that marker.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
BRIDGE_SUBNET = "10.77.0"  # private: the bridge lives in its own namespace, nothing routes to it
MARKER = "POKEDIFF_TEST_HOST"


# ----------------------------------------------------------------------------------------------
# The network: one namespace per host on a bridge, or loopback
# ----------------------------------------------------------------------------------------------
class Network:
    def __init__(self, hosts: list[str]):
        self.hosts = hosts
        self.tag = f"pd{os.getpid() % 100000}"
        self.namespaces: dict[str, str] = {}
        self.note = ""

    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)

    def up(self) -> None:
        if os.environ.get("POKEDIFF_TEST_LOOPBACK") or os.geteuid() != 0 or shutil.which("ip") is None:
            self.note = "network namespaces not used (needs root and iproute2): every host is on 127.0.0.1"
            return
        switch = f"{self.tag}-sw"
        try:
            self._ip("netns", "add", switch)
            self.namespaces["_switch"] = switch
            self._ip("-n", switch, "link", "add", "br0", "type", "bridge")
            self._ip("-n", switch, "link", "set", "br0", "up")
            for i, host in enumerate(self.hosts):
                ns = f"{self.tag}-{host}"
                self._ip("netns", "add", ns)
                self.namespaces[host] = ns
                near, far = f"v{self.tag[2:]}h{i}", f"v{self.tag[2:]}s{i}"
                self._ip("link", "add", near, "type", "veth", "peer", "name", far)
                self._ip("link", "set", near, "netns", ns)
                self._ip("link", "set", far, "netns", switch)
                self._ip("-n", switch, "link", "set", far, "master", "br0")
                self._ip("-n", switch, "link", "set", far, "up")
                self._ip("-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", near)
                self._ip("-n", ns, "link", "set", near, "up")
                self._ip("-n", ns, "link", "set", "lo", "up")
        except (subprocess.CalledProcessError, OSError) as exc:
            reason = getattr(exc, "stderr", "") or str(exc)
            self.down()
            self.note = f"network namespaces failed ({reason.strip()[:120]}): every host is on 127.0.0.1"

    def address(self, host: str) -> str:
        if host not in self.namespaces and "_switch" not in self.namespaces:
            return "127.0.0.1"
        return f"{BRIDGE_SUBNET}.{self.hosts.index(host) + 1}"

    def wrap(self, host: str, cmd: list[str]) -> list[str]:
        ns = self.namespaces.get(host)
        return ["ip", "netns", "exec", ns, *cmd] if ns else cmd

    def down(self) -> None:
        for ns in reversed(list(self.namespaces.values())):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.namespaces.clear()


# ----------------------------------------------------------------------------------------------
# A host
# ----------------------------------------------------------------------------------------------
@dataclass
class Host:
    name: str
    root: Path
    net: Network
    started: list[subprocess.Popen] = field(default_factory=list)

    def __post_init__(self):
        for sub in ("home", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "home" / ".gitconfig").write_text(
            f"[user]\n\tname = {self.name}\n\temail = {self.name}@example.invalid\n[init]\n\tdefaultBranch = main\n")

    @property
    def marker(self) -> str:
        return f"{self.name}-{os.getpid()}"

    @property
    def address(self) -> str:
        return self.net.address(self.name)

    def env(self, **extra: str) -> dict[str, str]:
        """A fresh login's environment on this host: the project's installed environment (this venv, this
        checkout's pokediff), no team settings unless given, its own HOME and TMPDIR."""
        dropped = ("MLFLOW_", "PREFECT_", "POKEDIFF_", "DVC_", "AWS_", "GIT_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
        env.update(HOME=str(self.root / "home"), TMPDIR=str(self.root / "tmp"), PYTHONPATH=str(REPO / "src"),
                   PATH=f"{Path(PY).parent}{os.pathsep}{os.environ.get('PATH', '')}", DO_NOT_TRACK="1",
                   MLFLOW_DISABLE_TELEMETRY="true", PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", **{MARKER: self.marker})
        env.update(extra)
        return env

    def run(self, cmd: list[str], cwd: Path | None = None, timeout: float = 900, check: bool = True,
            **env: str) -> subprocess.CompletedProcess:
        out = subprocess.run(self.net.wrap(self.name, cmd), cwd=cwd or self.root, env=self.env(**env),
                             capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"[{self.name}] {' '.join(cmd)} -> {out.returncode}\n{out.stdout[-3000:]}\n"
                                 f"{out.stderr[-5000:]}")
        return out

    def spawn(self, cmd: list[str], log: Path, cwd: Path | None = None, **env: str) -> subprocess.Popen:
        with log.open("ab") as out:
            proc = subprocess.Popen(self.net.wrap(self.name, cmd), cwd=cwd or self.root, env=self.env(**env),
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.started.append(proc)
        return proc

    def processes(self) -> list[int]:
        """Every live process this host started (found by the marker in its environment)."""
        needle = f"{MARKER}={self.marker}\0".encode()
        found = []
        for environ in Path("/proc").glob("[0-9]*/environ"):
            with contextlib.suppress(OSError):
                if needle in environ.read_bytes():
                    found.append(int(environ.parent.name))
        return found

    def crash(self) -> int:
        """The host dies: SIGKILL to every process it started. Returns how many there were."""
        pids = self.processes()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        return len(pids)

    def signal_matching(self, words: tuple[str, ...], sig: int) -> list[int]:
        """Send sig to this host's processes whose command line holds all of ``words``."""
        hit = []
        for pid in self.processes():
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
                if all(w in cmdline for w in words):
                    os.kill(pid, sig)
                    hit.append(pid)
        return hit


@contextlib.contextmanager
def team_root():
    """The folder of all hosts. PostgreSQL runs as an unprivileged user, which must be able to reach its
    cluster: pytest's own temp root is private (0700), and a concurrent pytest session makes it private
    again at any time, so the team lives in a folder of its own in the system's temp folder (0711),
    removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="pokediff-team-"))
    root.chmod(0o711)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Prefect's API, called from inside a host (the servers may be unreachable from this process)
# ----------------------------------------------------------------------------------------------
API_SCRIPT = r"""
import base64, json, os, sys, urllib.request
method, path = sys.argv[1], sys.argv[2]
body = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
token = base64.b64encode(os.environ["PREFECT_API_AUTH_STRING"].encode()).decode()
req = urllib.request.Request(os.environ["PREFECT_API_URL"].rstrip("/") + path, method=method,
                             data=None if body is None else json.dumps(body).encode(),
                             headers={"Authorization": "Basic " + token, "Content-Type": "application/json"})
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
with opener.open(req, timeout=60) as r:
    sys.stdout.write(r.read().decode())
"""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on (in a host's own namespace every port is free; on loopback, this one is)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class Team:
    net: Network
    hosts: dict[str, Host]
    state: Path
    client: dict[str, str]  # the stack's client settings (admin logins)
    users: dict[str, dict[str, str]]
    timings: list[tuple[str, str, float, str]] = field(default_factory=list)
    clone: Path | None = None  # the laptop's clone, which deployed
    results: dict = field(default_factory=dict)

    def settings_for(self, user: str) -> dict[str, str]:
        """A team.env's values for a machine whose MLflow login is ``user``."""
        return {**self.client, **self.users[user]}

    def write_team_env(self, folder: Path, user: str) -> Path:
        path = folder / "team.env"
        path.write_text("".join(f"{k}={v}\n" for k, v in self.settings_for(user).items()))
        path.chmod(0o600)
        return path

    def api(self, method: str, path: str, body: dict | None = None) -> object:
        laptop = self.hosts["laptop"]
        args = [PY, "-c", API_SCRIPT, method, path] + ([json.dumps(body)] if body is not None else [])
        out = laptop.run(args, timeout=120, PREFECT_API_URL=self.client["PREFECT_API_URL"],
                         PREFECT_API_AUTH_STRING=self.client["PREFECT_API_AUTH_STRING"])
        return json.loads(out.stdout or "null")

    def run_deployment(self, name: str, parameters: dict | None = None, tags: list[str] | None = None) -> str:
        deployment = self.api("GET", f"/deployments/name/{name}")
        run = self.api("POST", f"/deployments/{deployment['id']}/create_flow_run",
                       {"parameters": parameters or {}, "tags": tags or []})
        return run["id"]

    def flow_run(self, flow_run_id: str) -> dict:
        return self.api("GET", f"/flow_runs/{flow_run_id}")

    def wait_state(self, flow_run_id: str, wanted: set[str], timeout: float = 900) -> dict:
        """Poll until the flow run's state type is one of ``wanted`` (or a final state, which fails)."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.flow_run(flow_run_id)
            state = run["state"] or {}
            if state.get("type") in wanted or state.get("name") in wanted:
                return run
            if state.get("type") in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
                raise AssertionError(f"flow run {flow_run_id} ended {state.get('type')}: {state.get('message')}\n"
                                     + self.logs_text(flow_run_id)[-6000:])
            if time.monotonic() > deadline:
                raise AssertionError(f"flow run {flow_run_id} still {state.get('name')} after {timeout:.0f} s\n"
                                     + self.logs_text(flow_run_id)[-4000:])
            time.sleep(2)

    def logs_text(self, flow_run_id: str) -> str:
        messages: list[str] = []
        while True:  # the API answers at most 200 entries at a time
            page = self.api("POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}},
                                                     "sort": "TIMESTAMP_ASC", "limit": 200, "offset": len(messages)})
            messages += [entry["message"] for entry in page]
            if len(page) < 200:
                return "\n".join(messages)

    def wait_log(self, flow_run_id: str, pattern: str, timeout: float = 120) -> re.Match:
        """The first match of ``pattern`` in the flow run's logs (they reach the API a little after the
        state does: a finished run's last lines may still be on their way)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.logs_text(flow_run_id)
            found = re.search(pattern, text)
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not in the logs of flow run {flow_run_id}:\n{text[-4000:]}")
            time.sleep(2)

    def with_subflows(self, flow_run_id: str) -> list[str]:
        """The flow run and its subflow runs (the stages' output is logged in the pipeline subflow's)."""
        children = self.api("POST", "/flow_runs/filter",
                            {"flow_runs": {"parent_flow_run_id": {"any_": [flow_run_id]}}})
        return [flow_run_id] + [child["id"] for child in children]

    def prefect_logs_of(self, flow_run_ids: list[str]) -> str:
        return "\n".join(self.logs_text(i) for i in flow_run_ids)


# ----------------------------------------------------------------------------------------------
# The project a teammate clones, and its tiny recipe
# ----------------------------------------------------------------------------------------------
TINY_RECIPE = [
    "data.variants=[normal]", "data.frames_per_gif=1", "data.resolution=16", "validate.min_images=100",
    "validate.min_per_type=0",  # the normal-variant subset has fewer than 50 images of some types
    "model.resolution=16", "model.base_channels=16", "model.channel_mults=[1,2]", "model.num_res_blocks=1",
    "model.attention_resolutions=[8]", "model.head_channels=16", "model.groups=8", "model.dropout=0.0",
    "train.steps=60", "train.batch_size=8", "train.warmup_steps=2", "train.log_every=2", "train.checkpoint_every=4",
    "train.eval_every=0", "sample.steps=3", "sample.num_images=16", "sample.batch_size=16",
    "score.num_samples=16", "score.ref_max_images=16", "score.batch_size=16", "score.kid_subset_size=8",
    "score.kid_subsets=5",
]

