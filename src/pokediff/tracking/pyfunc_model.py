"""The MLflow model that ``mlflow models serve -m models:/pokemon-ddpm@champion`` runs.

Logged as "models from code" (tracking/served_model.py): MLflow stores this file's *source* (and
pokediff's code) with the model, not a cloudpickle of an object, and its only artifact is the weights
file ``model.safetensors`` (config in its metadata). Serving runs this file, which reads the weights
with safetensors: no step unpickles anything. pokediff itself never imports this module (importing
it registers the model with MLflow); ``pokediff sample --model`` reads only the safetensors artifact
(tracking/registry.py).

Request and answer: see pokediff/sample_requests.py.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

from pokediff.checkpoint import load_model
from pokediff.devices import resolve_device
from pokediff.sample_requests import RequestError, answer

OUTPUT_COLUMNS = ["request", "image", "png_base64"]


class PokediffSampler(PythonModel):
    def load_context(self, context):
        # EMA weights on the GPU when there is one; (model, ModelConfig, DiffusionConfig, step)
        self.model, _, self.diffusion_cfg, self.step = load_model(
            context.artifacts["weights"], use_ema=True, device=resolve_device(None))

    def predict(self, context, model_input, params=None):
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
