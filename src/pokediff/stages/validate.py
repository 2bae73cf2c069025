"""`pokediff validate`: run the Great Expectations suite over the ingested dataset.

Writes validate.out_dir/validation_result.json, validation_metrics.json and data_docs/index.html.
Exit code 1, with a short list of the failed expectations and the files behind them, when any
expectation fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pokediff.cli import add_common_arguments
from pokediff.config import Params, load_params
from pokediff.data.manifest import read_summary
from pokediff.data.sprites import expected_labels
from pokediff.locks import OutDirLock


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--dataset-dir", help="ingested dataset to check (default: data.out_dir)")
    parser.add_argument("--out-dir", help="where results and Data Docs go (default: validate.out_dir)")


def dataset_facts(params: Params, dataset_dir: Path) -> dict[str, Any]:
    """validate_dataset's resolution, background and expected variants: the last two from the settings
    the dataset was ingested with (its ingest_summary.json), else from params."""
    summary = read_summary(dataset_dir) or {}
    settings = summary.get("settings", {})
    expected = (
        tuple(expected_labels(settings.get("variants", []), settings.get("dreamworld", False)))
        if summary.get("sprite_layout") else ()
    )
    background = tuple(settings.get("background", params.data.background))
    return {"resolution": params.data.resolution, "background": background, "expected_variants": expected}


def run(args: argparse.Namespace) -> int:
    params = load_params(args.params, args.overrides)
    from pokediff.data.validation import validate_dataset  # great_expectations: ~4 s to import

    dataset_dir = Path(args.dataset_dir or params.data.out_dir)
    out_dir = Path(args.out_dir or params.validate_.out_dir)
    try:
        with OutDirLock(out_dir, "validate"):  # one writer per folder
            report = validate_dataset(dataset_dir, params.validate_, out_dir, **dataset_facts(params, dataset_dir))
    except FileNotFoundError as exc:
        print(f"pokediff validate: {exc}", file=sys.stderr)
        return 1
    stream = sys.stdout if report.success else sys.stderr
    print(report.summary_text(), file=stream)
    print(f"results: {report.files['result']}\nData Docs: {report.files['data_docs']} "
          f"(offline: {report.files['results_html']})", file=stream)
    return 0 if report.success else 1
