"""Where a person looks at a run: the MLflow and Prefect UIs' addresses, for links in the flows' artifacts,
log lines and the MLflow run's description.

    mlflow_ui(tracking_uri)          "http://127.0.0.1:5000" for the project's SQLite store
    mlflow_run_url(ui, exp, run)     ".../#/experiments/1/runs/<run id>"
    prefect_flow_run_url(run_id)     PREFECT_UI_URL/runs/flow-run/<id>, or the local server's address

A server's address is known when the tracking URI (or Prefect's API URL) names one. The project's own
stores have no server of their own: the links then point where the README's commands serve them
(`mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --port 5000`, `prefect server start`, which
reads the same .prefect/ database as the temporary server that `make pipeline` starts).
POKEDIFF_MLFLOW_UI_URL names another MLflow UI address.
"""

from __future__ import annotations

import os
from urllib.parse import quote

LOCAL_MLFLOW_UI = "http://127.0.0.1:5000"
LOCAL_PREFECT_UI = "http://127.0.0.1:4200"
MLFLOW_UI_ENV = "POKEDIFF_MLFLOW_UI_URL"
MLFLOW_UI_COMMAND = "mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --port 5000"
PREFECT_UI_COMMAND = "prefect server start"


def mlflow_ui(tracking_uri: str | None) -> str:
    """The MLflow UI's base address for runs in ``tracking_uri``."""
    if os.environ.get(MLFLOW_UI_ENV):
        return os.environ[MLFLOW_UI_ENV].rstrip("/")
    if tracking_uri and tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return LOCAL_MLFLOW_UI


def mlflow_serves_itself(tracking_uri: str | None) -> bool:
    """Whether the tracking store is a server (else someone has to start `mlflow ui` for the links)."""
    return bool(tracking_uri and tracking_uri.startswith(("http://", "https://")))


def mlflow_run_url(ui: str, experiment_id: str | None, run_id: str | None) -> str | None:
    if not (experiment_id and run_id):
        return None
    return f"{ui}/#/experiments/{quote(str(experiment_id))}/runs/{quote(str(run_id))}"


def mlflow_model_version_url(ui: str, name: str | None, version: str | int | None) -> str | None:
    if not (name and version):
        return None
    return f"{ui}/#/models/{quote(str(name))}/versions/{quote(str(version))}"


def prefect_ui() -> tuple[str, bool]:
    """(the Prefect UI's base address, whether a server is running there now). With no API URL the
    flow ran on a temporary server that is gone once it ends: its runs are in .prefect/, which
    `prefect server start` serves on the default address."""
    from prefect.settings import get_current_settings  # only inside a flow run, where prefect is loaded

    ui = get_current_settings().ui_url
    if ui:
        return ui.rstrip("/"), True
    return LOCAL_PREFECT_UI, False


def prefect_flow_run_url(flow_run_id: str | None) -> str | None:
    if not flow_run_id:
        return None
    ui, _ = prefect_ui()
    return f"{ui}/runs/flow-run/{quote(str(flow_run_id))}"
