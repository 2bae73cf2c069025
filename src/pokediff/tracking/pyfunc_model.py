"""The MLflow model that ``mlflow models serve -m models:/pokemon-ddpm@champion`` runs.

Logged as "models from code" (tracking/served_model.py): MLflow stores this file's *source* (and
pokediff's code) with the model, not a cloudpickle of an object, and its only artifact is the weights
file ``model.safetensors`` (config in its metadata). Serving runs this file, which reads the weights
with safetensors: no step unpickles anything. pokediff itself never imports this module (importing
it registers the model with MLflow); ``pokediff sample --model`` reads only the safetensors artifact
(tracking/registry.py).

Request and answer: see pokediff/sample_requests.py.

Requests are bounded before MLflow reads them. `mlflow models serve` (MLflow 3.17) runs uvicorn on a
FastAPI app that MLflow builds right after loading this model, and its /invocations handler reads the
whole body (`await request.body()`) before parsing it: a 300 MB body was accepted and the worker
reached 2.1 GB. uvicorn has no body limit, so when the model is loaded inside that scoring server,
`load_context` wraps every FastAPI app built in the process in `RequestBound`, an ASGI layer that
answers 413 for a body over MAX_REQUEST_BYTES (by its Content-Length, or while it streams in) and
400/415 for a body that pokediff.sample_requests.check_request_body refuses as sent, before MLflow
parses (deep JSON: a 500 from MLflow's RecursionError) or coerces it (`true`, 64.9, "0").
"""

from __future__ import annotations

import json
import sys

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

from pokediff.checkpoint import load_model
from pokediff.devices import resolve_device
from pokediff.sample_requests import (
    MAX_REQUEST_BYTES,
    RequestError,
    RequestTooLargeError,
    answer,
    check_request_body,
)

OUTPUT_COLUMNS = ["request", "image", "png_base64"]
SCORING_APP_MODULE = "mlflow.pyfunc.scoring_server.app"  # what `mlflow models serve` runs under uvicorn
BOUNDED_PATHS = ("/invocations",)  # the only routes that read a body


class RequestBound:
    """ASGI middleware: the body of a request to BOUNDED_PATHS is read here, at most MAX_REQUEST_BYTES,
    checked with `check_request_body`, and handed on whole; anything refused is answered here as
    MLflow answers an invalid parameter ({"error_code", "message"})."""

    def __init__(self, app, timesteps: int) -> None:
        self.app = app
        self.timesteps = timesteps

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("path") not in BOUNDED_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"0").decode("latin-1")
        if not declared.isdigit() or int(declared) > MAX_REQUEST_BYTES:
            await _refuse(send, RequestTooLargeError(f"request body larger than {MAX_REQUEST_BYTES:,} bytes"))
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > MAX_REQUEST_BYTES:
                await _refuse(send, RequestTooLargeError(f"request body larger than {MAX_REQUEST_BYTES:,} bytes"))
                return
            if not message.get("more_body", False):
                break
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        try:
            check_request_body(bytes(body), content_type, self.timesteps)
        except RequestError as exc:
            await _refuse(send, exc)
            return
        delivered = False

        async def replay():
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


async def _refuse(send, error: RequestError) -> None:
    payload = json.dumps({"error_code": "INVALID_PARAMETER_VALUE", "message": str(error)}).encode()
    await send({"type": "http.response.start", "status": error.http_status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def bound_scoring_server(timesteps: int) -> bool:
    """Inside `mlflow models serve` (its app module is being imported while the model loads), wrap the
    middleware stack of every FastAPI app in RequestBound; True when it did. Elsewhere (a notebook
    calling mlflow.pyfunc.load_model) nothing is changed."""
    if SCORING_APP_MODULE not in sys.modules:
        return False
    from fastapi import FastAPI  # MLflow's scoring server dependency

    if not getattr(FastAPI, "_pokediff_request_bound", False):
        build = FastAPI.build_middleware_stack

        def bounded_stack(app):
            return RequestBound(build(app), timesteps)

        FastAPI.build_middleware_stack = bounded_stack
        FastAPI._pokediff_request_bound = True
    return True


class PokediffSampler(PythonModel):
    def load_context(self, context):
        # EMA weights on the GPU when there is one; (model, ModelConfig, DiffusionConfig, step)
        self.model, _, self.diffusion_cfg, self.step = load_model(
            context.artifacts["weights"], use_ema=True, device=resolve_device(None))
        bound_scoring_server(self.diffusion_cfg.timesteps)

    # The signature makes MLflow hand requests over as a DataFrame. The hint says so, and it is a type
    # MLflow infers no schema from: without one, every log and load of the model warns "Add type hints".
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if isinstance(model_input, pd.DataFrame):
            rows = model_input.to_dict(orient="records")
        elif isinstance(model_input, dict):
            rows = [model_input]
        else:
            rows = list(model_input)
        try:
            out = answer(self.model, self.diffusion_cfg, rows)
        except RequestError as exc:  # -> HTTP 400 with the message, not a 500 with a traceback
            raise MlflowException.invalid_parameter_value(str(exc)) from None
        return pd.DataFrame(out, columns=OUTPUT_COLUMNS)


mlflow.models.set_model(PokediffSampler())
