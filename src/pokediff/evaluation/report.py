"""Writing scores: a flat metrics JSON (for ``dvc metrics show``) and a per-sample nearest-image CSV."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pokediff.csv_cells import neutralise
from pokediff.files import write_atomic


def write_metrics_json(metrics: Mapping[str, Any], path: str | Path) -> Path:
    """Flat {key: number} -> pretty JSON, keys sorted. Non-finite floats are refused (invalid JSON)."""
    path = Path(path)
    for key, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"metric {key} is {value}; refusing to write {path}")
    return write_atomic(path, json.dumps(dict(metrics), indent=2, sort_keys=True) + "\n")


def write_nearest_csv(
    path: str | Path,
    sample_paths: Sequence[str],
    distances: Sequence[float],
    nearest_paths: Sequence[str],
    threshold: float,
) -> Path:
    """One row per sample: its nearest reference image, the distance, and whether it is below
    ``threshold`` (the median train-to-train distance), closest first: the rows to look at first."""
    rows = sorted(zip(sample_paths, distances, nearest_paths), key=lambda r: r[1])
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["sample", "nearest_reference", "distance", "below_train_nn_median"])
    for sample, dist, ref in rows:
        writer.writerow([neutralise(sample), neutralise(ref), f"{dist:.4f}", int(dist < threshold)])
    return write_atomic(path, text.getvalue())
