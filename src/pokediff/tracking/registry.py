"""Reading the model registry: the weights file of a registered version (``models:/NAME@ALIAS``).

Only ``artifacts/*.safetensors`` of the version is downloaded; nothing in the registry is unpickled or
imported. Loading the network from that file is pokediff.checkpoint's (see `pokediff sample --model`).
"""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

from pokediff.checkpoint import CheckpointError
from pokediff.errors import shorten
from pokediff.tracking.store import configure, error_words

WEIGHTS_DIR = "artifacts"  # where mlflow.pyfunc puts the `artifacts={"weights": ...}` files


def download_model_file(uri: str, dst_dir: str | Path) -> Path:
    """Download the safetensors weights of a registered version (e.g. ``models:/pokemon-ddpm@champion``)
    into the existing folder ``dst_dir``; returns the file's path. CheckpointError (one line) when the
    URI is not a registry URI, is not in the store, or its version holds no single safetensors file."""
    configure()
    if not ModelsArtifactRepository.is_models_uri(uri):
        raise CheckpointError(f"{shorten(uri, 200)}: not a registry URI (expected models:/NAME@ALIAS or "
                              "models:/NAME/VERSION)")
    try:
        repo = ModelsArtifactRepository(uri)
        found = [f for f in repo.list_artifacts(WEIGHTS_DIR) if not f.is_dir and f.path.endswith(".safetensors")]
    except MlflowException as exc:
        raise CheckpointError(f"{shorten(uri, 200)}: not found in the MLflow store {mlflow.get_tracking_uri()} "
                              f"({error_words(exc)})") from None
    if len(found) != 1:
        raise CheckpointError(
            f"{shorten(uri, 200)} (version {repo.model_version}): holds no safetensors weights under "
            f"{WEIGHTS_DIR}/, so it was not registered by pokediff; register a model.safetensors")
    return Path(repo.download_artifacts(found[0].path, dst_path=str(dst_dir)))
