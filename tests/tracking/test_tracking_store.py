"""Where the MLflow store is: the project root from any sub-folder, an error outside a project, and a
copied project that writes into its own mlruns/ (real SQLite stores in temporary folders)."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture
def no_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _log_run_with_artifact(name: str) -> str:
    import mlflow

    from pokediff.tracking.store import configure

    experiment_id = configure()
    with mlflow.start_run(experiment_id=experiment_id, run_name=name) as run:
        mlflow.log_text(f"made by {name}", "note.txt")
    return run.info.run_id


def test_store_is_found_from_a_sub_folder(tmp_path, monkeypatch, no_uri):
    import mlflow

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    sub = tmp_path / "notebooks" / "deep"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    run_id = _log_run_with_artifact("from-sub")
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert not (sub / "mlruns").exists() and not (tmp_path / "notebooks" / "mlruns").exists()
    assert (tmp_path / "mlruns" / "artifacts" / run_id / "artifacts" / "note.txt").is_file()
    experiment = mlflow.get_experiment_by_name("pokediff")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # not the GenAI view


def test_outside_a_project_is_one_line_and_writes_nothing(tmp_path, monkeypatch, no_uri):
    from pokediff.errors import PokediffError
    from pokediff.tracking.store import configure

    monkeypatch.chdir(tmp_path)
    with pytest.raises(PokediffError) as err:
        configure()
    message = str(err.value)
    assert "\n" not in message and "MLFLOW_TRACKING_URI" in message and str(tmp_path) in message
    assert list(tmp_path.iterdir()) == []  # no stray mlruns/ or mlflow.db


def test_a_copied_project_writes_into_its_own_mlruns(tmp_path, monkeypatch, no_uri, capsys):
    import mlflow

    original, copy = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    (original / "params.yaml").write_text("{}\n")
    monkeypatch.chdir(original)
    old_run = _log_run_with_artifact("before-copy")

    shutil.copytree(original, copy)
    monkeypatch.chdir(copy)
    new_run = _log_run_with_artifact("in-the-copy")
    assert "moved or copied" in capsys.readouterr().err
    assert (copy / "mlruns" / "artifacts" / new_run / "artifacts" / "note.txt").is_file()
    assert not (original / "mlruns" / "artifacts" / new_run).exists()
    # The runs that came with the copy resolve inside the copy too, even once the original is gone.
    shutil.rmtree(original)
    text = mlflow.artifacts.load_text(f"runs:/{old_run}/note.txt")
    assert text == "made by before-copy"
    assert mlflow.get_run(old_run).info.artifact_uri.startswith((copy / "mlruns").as_uri())
    # Configuring again is a no-op (nothing to relocate, no message).
    _log_run_with_artifact("again")
    assert "moved or copied" not in capsys.readouterr().err
