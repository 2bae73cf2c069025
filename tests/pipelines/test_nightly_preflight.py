"""The nightly deployment on a machine its recipe cannot fit: deployed from prefect.yaml with
`prefect deploy`, triggered with `prefect deployment run`, run by a real process worker. It must fail
in its preflight, before the first stage (no fetch, no ingest, no Inception statistics), with the
memory check's line, and leave outputs/ exactly as they were. `prefect deploy` must say when it runs.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from project_copy import commit_all, project_checkout

REPO = Path(__file__).resolve().parents[2]
POOL = "pokediff-pool"  # prefect.yaml's work pool


def _project(dest: Path) -> Path:
    """A git checkout of the project whose committed params.yaml asks for a batch no machine holds."""
    project_checkout(dest, data=False)
    params = (dest / "params.yaml").read_text()
    recipe = re.sub(r"(?m)^(  batch_size:) 128\b", r"\1 65536", params, count=1)  # train.batch_size
    assert yaml.safe_load(recipe)["train"]["batch_size"] == 65536
    (dest / "params.yaml").write_text(recipe)
    commit_all(dest, "a recipe too big for this machine")
    # Outputs of an earlier run, which the failed run must not touch.
    for path, data in (("outputs/ref_stats/ref_stats.npz", os.urandom(4096)),
                       ("outputs/dataset/manifest.csv", b"path,species\nimages/0.png,1\n"),
                       ("outputs/train/model.safetensors", os.urandom(2048))):
        (dest / path).parent.mkdir(parents=True, exist_ok=True)
        (dest / path).write_bytes(data)
    return dest


def _tree(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_nightly_run_that_cannot_fit_fails_before_the_first_stage_and_leaves_outputs(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    project = _project(tmp_path)
    outputs_before = _tree(project / "outputs")
    with prefect_test_harness(server_startup_timeout=180):
        env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(),
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               "PYTHONPATH": f"{project / 'src'}{os.pathsep}{project}", "PREFECT_HOME": str(tmp_path / ".prefect-cli")}
        env.pop("MLFLOW_TRACKING_URI", None)

        def prefect(*args: str, timeout: int = 300) -> str:
            out = subprocess.run(["prefect", "--no-prompt", *args], cwd=project, env=env, capture_output=True,
                                 text=True, timeout=timeout)
            assert out.returncode == 0, out.stdout + out.stderr
            return out.stdout + out.stderr

        prefect("work-pool", "create", POOL, "--type", "process")
        deployed = prefect("deploy", "--name", "nightly-train")
        assert "scheduled every night at 02:00 UTC" in " ".join(deployed.split()), deployed
        started = prefect("deployment", "run", "pokediff-pipeline/nightly-train")
        flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", started).group(1)
        worker = prefect("worker", "start", "--pool", POOL, "--run-once", timeout=900)

        with get_client(sync_client=True) as client:
            run = client.read_flow_run(flow_run_id)
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    assert run.state.is_failed(), (run.state, worker[-3000:])
    message = run.state.message
    assert message.startswith("preflight: pokediff train: this training run needs about"), message
    assert "batch 65536" in message and "\n" not in message
    assert {t.name for t in tasks} == {"preflight"}  # nothing fetched, no stage started
    assert _tree(project / "outputs") == outputs_before
    assert not (project / "dvc.lock").exists() and not (project / "data").exists()
    seconds = (run.end_time - run.start_time).total_seconds()
    print(f"nightly-train on a recipe that cannot fit: failed after {seconds:.1f} s in its preflight")
