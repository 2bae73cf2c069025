"""The registered model: code + safetensors (no pickle), loaded by pokediff from the weights alone, refused
when a version holds only pickles, and served by a real `mlflow models serve` on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import json
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from helpers import TINY_CLI_OVERRIDES, PicklePayload, tiny_model_config
from pokediff.checkpoint import load_file, save_model_file
from pokediff.config import DiffusionConfig, Params

TINY = TINY_CLI_OVERRIDES


Payload = PicklePayload


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A project whose SQLite store holds version 1 of pokemon-ddpm (a tiny 16x16 U-Net, @champion)."""
    from mlflow import MlflowClient

    from pokediff.models import UNet
    from pokediff.tracking.run import TrainingRun

    project = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        # An absolute URI: MLflow caches stores by URI string, and the relative default would stay bound
        # to this project's database for later tests in other directories.
        (project / "mlruns").mkdir()
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project}/mlruns/mlflow.db")
        torch.manual_seed(0)
        cfg = tiny_model_config()
        net, ema = UNet(cfg), UNet(cfg)
        model_file = save_model_file(project / "run" / "model.safetensors", net.state_dict(), ema.state_dict(), cfg,
                                     DiffusionConfig(), step=7)
        with TrainingRun(Params(), project / "run") as run:
            version = run.finish(model_file, None)
        MlflowClient().set_registered_model_alias("pokemon-ddpm", "champion", version)
        yield project
    import mlflow

    mlflow.set_tracking_uri(None)


def _env(project: Path, **extra) -> dict:
    # This interpreter's scripts first on PATH: `mlflow models serve` execs `uvicorn` by name, and
    # `make test` runs pytest as .venv/bin/python without activating the venv.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": f"sqlite:///{project}/mlruns/mlflow.db", **extra}


def _pokediff(*args, cwd, env):
    return subprocess.run([sys.executable, "-m", "pokediff", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_registered_model_is_code_and_safetensors_only(registry, tmp_path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{registry}/mlruns/mlflow.db")
    local = Path(mlflow.artifacts.download_artifacts("models:/pokemon-ddpm/1", dst_path=str(tmp_path)))
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert not [f for f in files if f.endswith((".pkl", ".pt", ".pth", ".pickle", ".joblib"))], files
    assert [f for f in files if f.endswith(".safetensors")] == ["artifacts/model.safetensors"]
    assert "pyfunc_model.py" in files and "input_example.json" in files

    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    pyfunc = mlmodel["flavors"]["python_function"]
    assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model"  # models from code: no cloudpickle
    assert pyfunc["artifacts"]["weights"]["path"] == "artifacts/model.safetensors"
    inputs = [c["name"] for c in json.loads(mlmodel["signature"]["inputs"])]
    assert inputs == ["num_images", "sampler", "steps", "seed", "eta", "type", "guidance"]
    assert mlmodel["metadata"]["step"] == 7 and mlmodel["metadata"]["format"] == "pokediff-model-v2"
    weights = load_file(local / "artifacts" / "model.safetensors")
    registered = load_file(registry / "run" / "model.safetensors")
    assert all(torch.equal(weights["ema"][k], registered["ema"][k]) for k in registered["ema"])


def test_sample_from_champion_reads_the_weights_and_leaves_no_copy(registry, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    r = _pokediff("sample", "--model", "models:/pokemon-ddpm@champion", "--sampler", "ddim", "--steps", "2",
                  "--num-images", "2", "--out", str(tmp_path / "grid.png"), *TINY, cwd=registry,
                  env=_env(registry, TMPDIR=str(tmp)))
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "grid_images").glob("*.png"))) == 2
    info = json.loads((tmp_path / "sample_info.json").read_text())
    assert info["source"] == "models:/pokemon-ddpm@champion (step 7)"
    left = [p for p in tmp.rglob("*") if "pokediff-model" in str(p) or p.suffix in (".safetensors", ".pt")]
    assert not left, left  # today's main left a model copy in the temp dir on every call


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read(10_000_000))
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read(100_000))


def _post_huge(port: int, chunked: bool, total: int = 300_000_000) -> tuple[int, dict, int]:
    """POST a `total`-byte body to /invocations (declared by Content-Length, or chunked), sending only
    while the server has not answered: (status, answer, body bytes sent before the answer came)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
        length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
        conn.sendall(f"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     f"{length}\r\n\r\n".encode())
        piece = b"a" * (1 << 16)
        sent = 0
        while sent < total and not select.select([conn], [], [], 0.01 if sent else 2.0)[0]:
            try:
                conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            except OSError:  # the server answered and closed while we were sending
                break
            sent += len(piece)
        head, _, body = conn.recv(1 << 16).partition(b"\r\n\r\n")
        status = int(head.split()[1])
        length_line = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
        while length_line and len(body) < int(length_line[0].split(b":")[1]):
            body += conn.recv(1 << 16)
    return status, json.loads(body), sent


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_pngs(registry, tmp_path):
    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/pokemon-ddpm@champion",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        cwd=registry, env=_env(registry), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.perf_counter() - t0 < 180, "server did not answer /ping within 180 s"
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        started = time.perf_counter() - t0

        request = {"dataframe_records": [{"num_images": 2, "sampler": "ddim", "steps": 2, "seed": 0}]}
        status, answer = _post(f"{base}/invocations", request)
        assert status == 200, answer
        rows = answer["predictions"]
        assert [(r["request"], r["image"]) for r in rows] == [(0, 0), (0, 1)]
        images = [np.asarray(Image.open(io.BytesIO(base64.b64decode(r["png_base64"])))) for r in rows]
        assert all(img.shape == (16, 16, 3) and img.dtype == np.uint8 for img in images)
        assert not np.array_equal(images[0], images[1]), "two draws of one seed stream differ"

        # Requests are bounded: a huge one is a 400 naming the field, not an out-of-memory server.
        status, answer = _post(f"{base}/invocations", {"dataframe_records": [
            {"num_images": 100000, "sampler": "ddim", "steps": 2, "seed": 0}]})
        assert status == 400 and "num_images must be an integer from 1 to 64" in answer["message"]
        # A type or a guidance scale for this unconditional champion: a 400 that says so.
        status, answer = _post(f"{base}/invocations", {"dataframe_records": [
            {"num_images": 1, "sampler": "ddim", "steps": 2, "seed": 0, "type": "water", "guidance": 2.0}]})
        assert status == 400 and "this model is unconditional" in answer["message"], answer
        # A body over the limit is a 413 before it is read: by its Content-Length (nothing of it read),
        # and chunked (read only up to the limit). On main the 300 MB body was read whole: a 500 or an
        # out-of-memory worker.
        for chunked in (False, True):
            status, answer, sent = _post_huge(port, chunked)
            assert status == 413 and answer["message"] == "request body larger than 65,536 bytes", answer
            assert sent < 50_000_000, f"{sent:,} bytes of a 300 MB body were taken before the 413"
        status, answer = _post(f"{base}/invocations", request)
        assert status == 200 and len(answer["predictions"]) == 2, "the server still answers"
        print(f"serve: /ping after {started:.1f} s, total {time.perf_counter() - t0:.1f} s")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group (start_new_session)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()


def test_versions_without_safe_weights_are_refused_without_running(registry, tmp_path):
    """Version 2: a version holding only a pickled model.pt. Version 3: a pickle named
    artifacts/model.safetensors. `pokediff sample --model` (what the sample-from-champion flow runs)
    refuses both with one line and never unpickles them."""
    import mlflow
    from mlflow import MlflowClient

    marker = tmp_path / "PWNED"
    evil = pickle.dumps({"format": "pokediff-model-v1", "model": Payload(marker)}, protocol=4)
    old, fake = tmp_path / "old" / "model.pt", tmp_path / "fake" / "artifacts" / "model.safetensors"
    for path in (old, fake):
        path.parent.mkdir(parents=True)
        path.write_bytes(evil)
    mlflow.set_tracking_uri(f"sqlite:///{registry}/mlruns/mlflow.db")
    client = MlflowClient()
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name("pokediff").experiment_id) as run:
        mlflow.log_artifact(str(old), "old")
        mlflow.log_artifacts(str(fake.parent.parent), "fake")
    for sub in ("old", "fake"):
        client.create_model_version("pokemon-ddpm", f"runs:/{run.info.run_id}/{sub}", run_id=run.info.run_id)

    expected = {"2": ("holds no safetensors weights", "not registered by pokediff"), "3": ("a bare pickle", "refused")}
    for version, needles in expected.items():
        tmp = tmp_path / f"tmp{version}"
        tmp.mkdir()
        r = _pokediff("sample", "--model", f"models:/pokemon-ddpm/{version}", "--num-images", "1", *TINY,
                      cwd=registry, env=_env(registry, TMPDIR=str(tmp)))
        err = r.stderr.strip()
        assert r.returncode == 1 and "Traceback" not in err and len(err.splitlines()) == 1, err
        assert all(needle in err for needle in needles), err
        assert not list(tmp.rglob("*.safetensors"))
    assert not marker.exists()


def test_a_conditional_served_model_answers_typed_requests(tmp_path, monkeypatch):
    """The logged pyfunc of a type-conditional model (what `mlflow models serve` runs), loaded from the
    registry and asked for water- and fire-type images through its signature."""
    import mlflow
    import pandas as pd

    from pokediff.models import UNet
    from pokediff.tracking.run import TrainingRun

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlruns").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    try:
        torch.manual_seed(0)
        cfg = tiny_model_config(condition="type")
        net = UNet(cfg)
        with torch.no_grad():  # zero-initialised output layers would make every image the same
            for p in net.parameters():
                if not p.abs().sum():
                    p.normal_(0, 0.05)
        model_file = save_model_file(tmp_path / "run" / "model.safetensors", net.state_dict(), net.state_dict(), cfg,
                                     DiffusionConfig(), step=3)
        with TrainingRun(Params(), tmp_path / "run") as run:
            version = run.finish(model_file, None)
        served = mlflow.pyfunc.load_model(f"models:/pokemon-ddpm/{version}")
        row = {"num_images": 1, "sampler": "ddim", "steps": 3, "seed": 0}
        out = served.predict(pd.DataFrame([{**row, "type": "water", "guidance": 2.0},
                                           {**row, "type": "fire", "guidance": 2.0}]))
        assert list(out["request"]) == [0, 1]
        images = [np.asarray(Image.open(io.BytesIO(base64.b64decode(b)))).astype(int) for b in out["png_base64"]]
        assert images[0].shape == (16, 16, 3) and np.abs(images[0] - images[1]).mean() > 0.5  # same seed, other type
        with pytest.raises(Exception, match="unknown type 'fyre'"):
            served.predict(pd.DataFrame([{**row, "type": "fyre"}]))
    finally:
        mlflow.set_tracking_uri(None)
