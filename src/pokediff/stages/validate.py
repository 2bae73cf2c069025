"""`pokediff validate`: run the Great Expectations suite over the ingested dataset.

Writes validate.out_dir/validation_result.json, validation_metrics.json and data_docs/index.html.
Exit code 1, with a short list of the failed expectations and the files behind them, when any
expectation fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pokediff.cli import add_common_arguments
from pokediff.config import Params, load_params
from pokediff.data.manifest import read_summary
from pokediff.data.sprites import expected_labels

if TYPE_CHECKING:
    from pokediff.data.validation import ValidationThresholds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--dataset-dir", help="ingested dataset to check (default: data.out_dir)")
    parser.add_argument("--out-dir", help="where results and Data Docs go (default: validate.out_dir)")


def thresholds_from(params: Params, dataset_dir: Path) -> ValidationThresholds:
    """Thresholds from params; expected variants from the settings the dataset was ingested with."""
    from pokediff.data.validation import ValidationThresholds

    summary = read_summary(dataset_dir) or {}
    settings = summary.get("settings", {})
    expected = (
        tuple(expected_labels(settings.get("variants", []), settings.get("dreamworld", False)))
        if summary.get("sprite_layout") else ()
    )
    v = params.validate_
    return ValidationThresholds(
        resolution=params.data.resolution,
        min_images=v.min_images,
        min_per_variant=v.min_per_variant,
        max_species_id=v.max_species_id,
        max_background_fraction=v.max_background_fraction,
        min_pixel_std=v.min_pixel_std,
        background=tuple(settings.get("background", params.data.background)),
        expected_variants=expected,
    )


def run(args: argparse.Namespace) -> int:
    params = load_params(args.params, args.overrides)
    from pokediff.data.validation import validate_dataset  # great_expectations: ~4 s to import

    dataset_dir = Path(args.dataset_dir or params.data.out_dir)
    out_dir = Path(args.out_dir or params.validate_.out_dir)
    try:
        report = validate_dataset(dataset_dir, thresholds_from(params, dataset_dir), out_dir)
    except FileNotFoundError as exc:
        print(f"pokediff validate: {exc}", file=sys.stderr)
        return 1
    stream = sys.stdout if report.success else sys.stderr
    print(report.summary_text(), file=stream)
    print(f"results: {report.files['result']}\nData Docs: {report.files['data_docs']} "
          f"(offline: {report.files['results_html']})", file=stream)
    return 0 if report.success else 1
