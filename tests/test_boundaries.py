"""The pure-math packages must not drag in the MLOps stack."""

import subprocess
import sys


def test_math_and_models_do_not_import_mlops_packages():
    code = (
        "import sys, pokediff.diffusion, pokediff.models;"
        "heavy = [m for m in ('mlflow', 'prefect', 'dvc', 'great_expectations') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported: {out.stdout.strip()}"


def test_cli_help_is_fast_and_lists_every_stage():
    out = subprocess.run([sys.executable, "-m", "pokediff", "--help"], capture_output=True, text=True, check=True)
    for command in ("fetch-data", "ingest", "validate", "train", "sample", "ref-stats", "score", "fid"):
        assert command in out.stdout


def _loaded_after(imports: str, candidates: tuple[str, ...]) -> list[str]:
    code = f"import sys, {imports}; print(','.join(m for m in {candidates!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_the_model_file_format_loads_no_training_loop_sampler_or_mlflow():
    # what `pokediff sample`, the registry and the served model read
    assert _loaded_after("pokediff.checkpoint", ("pokediff.training.loop", "pokediff.training.step",
                                                 "pokediff.diffusion", "pokediff.generation", "mlflow")) == []


def test_generation_loads_no_tracking_training_or_ingest():
    assert _loaded_after("pokediff.generation", ("pokediff.tracking", "pokediff.training", "pokediff.data.ingest",
                                                 "pokediff.data.ingest_workers", "mlflow")) == []


def test_ingest_worker_modules_load_no_torch():
    # ingest's decoding runs in worker processes: each would pay seconds and hundreds of MB for torch
    assert _loaded_after("pokediff.data.ingest, pokediff.data.ingest_workers", ("torch", "great_expectations")) == []
