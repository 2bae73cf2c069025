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
