"""The served model's sampling requests: parse and bound them, generate, answer with base64 PNGs.

A request row (one per image batch asked for; JSON, e.g. ``{"dataframe_records": [row, ...]}`` to
``mlflow models serve``'s /invocations):

    {"num_images": 2, "sampler": "ddim", "steps": 20, "seed": 0, "eta": 0.0}   # eta optional (DDIM only)

answer: one row per image, ``{"request": i, "image": j, "png_base64": "<base64 of a PNG>"}``.

Requests are bounded (images per call, rows, steps <= the model's timesteps), so one call cannot ask
the server for unbounded memory or time. The served model checks the raw request before MLflow parses
it (`check_request_body`): at most MAX_REQUEST_BYTES of JSON, no deeper nesting than the JSON decoder
takes, and the rows as sent, since MLflow's signature coercion would turn `true`, `64.9` and `"0"` into
1, 64 and 0 before `parse_requests` sees them. No mlflow import here: the MLflow wrapper that calls
``answer`` is pokediff/tracking/pyfunc_model.py.
"""

from __future__ import annotations

import base64
import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from pokediff.choices import ETA_SAMPLERS, SAMPLERS
from pokediff.config import DiffusionConfig, SampleConfig
from pokediff.generation import generate
from pokediff.limits import read_json_text
from pokediff.pixels import encode_png, to_pil

MAX_IMAGES_PER_CALL = 64  # summed over the rows of one call
MAX_ROWS_PER_CALL = 16
MAX_REQUEST_BYTES = 64 << 10  # a full request of 16 rows is under 2 KB
BATCH_SIZE = 16  # images per forward pass while serving
REQUEST_EXAMPLE = {"num_images": 1, "sampler": "ddim", "steps": 10, "seed": 0, "eta": 0.0}
# The JSON layouts of MLflow's scoring protocol that carry rows: records, or columns + data.
_ROW_KEYS = ("dataframe_records", "dataframe_split", "instances", "inputs")


class RequestError(ValueError):
    """A request the server answers with `http_status` (400; the message names the row and field)."""

    http_status = 400


class RequestTooLargeError(RequestError):
    http_status = 413


class UnsupportedContentError(RequestError):
    http_status = 415


def check_request_body(body: bytes, content_type: str | None, timesteps: int) -> list[SampleConfig]:
    """The configs a raw /invocations body asks for, checked as sent (before MLflow parses or coerces
    it): JSON of at most MAX_REQUEST_BYTES, rows under one of MLflow's row keys, each valid for
    `parse_requests`. Raises RequestError (or its 413/415 subclasses) with a one-line message."""
    if len(body) > MAX_REQUEST_BYTES:
        raise RequestTooLargeError(f"request body larger than {MAX_REQUEST_BYTES:,} bytes")
    mime = (content_type or "").split(";")[0].strip().lower()
    if mime != "application/json":
        raise UnsupportedContentError(f"send the request as JSON (Content-Type: application/json), not "
                                      f"{mime[:40] or 'no content type'}")
    try:
        value = read_json_text(body, "request body")
    except ValueError as exc:
        raise RequestError(str(exc)) from None
    return parse_requests(request_rows(value), timesteps)


def request_rows(value: Any) -> list[Mapping[str, Any]]:
    """The rows of a decoded request body: {"dataframe_records": [row, ...]}, {"dataframe_split":
    {"columns": [...], "data": [[...], ...]}}, or {"instances"|"inputs": [row, ...]}."""
    keys = [key for key in _ROW_KEYS if isinstance(value, dict) and key in value]
    if len(keys) != 1:
        raise RequestError(f"expected a JSON object with one of {', '.join(_ROW_KEYS)}")
    rows = value[keys[0]]
    if keys[0] == "dataframe_split":
        columns = rows.get("columns") if isinstance(rows, dict) else None
        data = rows.get("data") if isinstance(rows, dict) else None
        if (not isinstance(columns, list) or not all(isinstance(column, str) for column in columns)
                or not isinstance(data, list) or len(data) > MAX_ROWS_PER_CALL
                or any(not isinstance(row, list) or len(row) != len(columns) for row in data)):
            raise RequestError("dataframe_split needs columns and data rows of the same length")
        rows = [dict(zip(columns, row, strict=True)) for row in data]
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise RequestError(f"{keys[0]} must be a list of request objects, e.g. {REQUEST_EXAMPLE}")
    return rows


def _int(row: Mapping[str, Any], key: str, i: int, lo: int, hi: int) -> int:
    value = row.get(key)
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and float(value).is_integer():
        value = int(value)  # JSON numbers may arrive as floats through a DataFrame
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= value <= hi:
        raise RequestError(f"request {i}: {key} must be an integer from {lo} to {hi}, got {str(value)[:40]}")
    return int(value)


def parse_requests(rows: Iterable[Mapping[str, Any]], timesteps: int) -> list[SampleConfig]:
    """Request rows -> one SampleConfig each (validated, bounded). Raises RequestError."""
    rows = list(rows)
    if not 1 <= len(rows) <= MAX_ROWS_PER_CALL:
        raise RequestError(f"give 1 to {MAX_ROWS_PER_CALL} request rows, got {len(rows)}")
    out, total = [], 0
    for i, row in enumerate(rows):
        n = _int(row, "num_images", i, 1, MAX_IMAGES_PER_CALL)
        sampler = row.get("sampler")
        if sampler not in SAMPLERS:
            raise RequestError(f"request {i}: sampler must be one of {', '.join(SAMPLERS)}, got {str(sampler)[:40]}")
        steps = _int(row, "steps", i, 1, timesteps)
        seed = _int(row, "seed", i, 0, 2**63 - 1)
        eta = row.get("eta")
        if eta is None or (isinstance(eta, numbers.Real) and math.isnan(eta)):  # optional: missing -> NaN
            eta = 0.0
        if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not 0.0 <= eta <= 1.0:
            raise RequestError(f"request {i}: eta must be a number from 0 to 1, got {str(eta)[:40]}")
        if eta != 0.0 and sampler not in ETA_SAMPLERS:
            raise RequestError(f"request {i}: eta is used only by {', '.join(ETA_SAMPLERS)}; give 0 for {sampler}")
        total += n
        if total > MAX_IMAGES_PER_CALL:
            raise RequestError(f"at most {MAX_IMAGES_PER_CALL} images per call")
        out.append(SampleConfig(sampler=sampler, steps=steps, eta=float(eta), num_images=n, seed=seed,
                                batch_size=min(n, BATCH_SIZE)))
    return out


def png_base64(image: torch.Tensor) -> str:
    """uint8 (C, H, W) -> base64 text of its PNG (pokediff.pixels.encode_png: the sample files' bytes)."""
    return base64.b64encode(encode_png(to_pil(image))).decode("ascii")


def answer(model: nn.Module, diffusion_cfg: DiffusionConfig, rows: Iterable[Mapping[str, Any]]) -> list[dict]:
    """Generate the images of every request row; [{"request", "image", "png_base64"}, ...]."""
    configs = parse_requests(rows, diffusion_cfg.timesteps)
    out = []
    for i, cfg in enumerate(configs):
        images = generate(model, diffusion_cfg, cfg, steps=cfg.steps).images  # uint8 (N, C, R, R)
        out += [{"request": i, "image": j, "png_base64": png_base64(img)} for j, img in enumerate(images)]
    return out
