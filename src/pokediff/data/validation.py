"""Validate an ingested dataset with a Great Expectations suite, re-reading every image from disk.

The manifest is a claim; the PNG files are the truth. `inspect_files` opens each file the manifest
lists and measures it again (size and mode from the PNG header, pixel hash and statistics from the
decoded pixels), so a file replaced, resized or deleted after ingest is caught, and a hand-made
dataset with only a `path` column can be checked too. Files are read as training reads them, never
outside the dataset folder (pokediff.data.sources.read_in_folder), with the same decoders and limits
(pokediff.data.raster.open_raster); pixels are decoded only for a file of at most R x R pixels (a
larger one fails the size check by its header alone). Two tables are validated:

    images     one row per manifest row: file readable, exactly R x R, RGB, unique pixel hash,
               species id in range, not almost all background, not almost uniform, unchanged since
               ingest (pixel hash equals the manifest's), paths unique, at least `min_images` rows
    variants   one row per variant label (present or expected): at least `min_per_variant` images
    types      (labelled datasets: the sprites) one row per Pokémon type: at least `min_per_type` images,
               and in the images table every image labelled with one or two known types

Results go to `out_dir`: validation_result.json (every expectation, success, failing rows named
by path or variant), validation_metrics.json (for `dvc metrics show`) and data_docs/ (GX's HTML
report; its stylesheets and its index's list of runs load from public CDNs, so offline open
data_docs/results.html: a static page of every expectation with links to GX's validation pages).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
from great_expectations.data_context.types.base import ProgressBarsConfig

from pokediff.config import ValidateConfig
from pokediff.data.decode import RGB
from pokediff.data.manifest import MANIFEST_NAME, TYPES_COLUMN, pixel_stats, read_manifest, write_json
from pokediff.data.raster import DECODE_CPU_SECONDS, BadImageError, open_raster
from pokediff.data.sources import read_in_folder
from pokediff.limits import cpu_time_limit
from pokediff.pokemon_types import MANIFEST_SEPARATOR, TYPES, parse_manifest_types

RESULT_NAME = "validation_result.json"
METRICS_NAME = "validation_metrics.json"
DATA_DOCS_DIR = "data_docs"
SUITE_IMAGES = "pokediff_images"
SUITE_VARIANTS = "pokediff_variants"
SUITE_TYPES = "pokediff_types"
# one or two known type names joined by ";" (pokediff.pokemon_types: the manifest's spelling)
_TYPE_NAME = "(?:" + "|".join(TYPES) + ")"
TYPES_PATTERN = f"^{_TYPE_NAME}(?:{MANIFEST_SEPARATOR}{_TYPE_NAME})?$"
_SHOWN_PER_EXPECTATION = 5


@dataclass(frozen=True)
class ExpectationOutcome:
    table: str
    expectation: str  # GX type, e.g. expect_column_values_to_be_between
    column: str | None
    description: str
    kwargs: dict[str, Any]
    success: bool
    unexpected_count: int | None
    failing: list[dict[str, Any]]  # rows that broke it: {"path"|"variant"|"type": ..., "value": ...}
    observed_value: Any = None
    error: str | None = None  # GX raised while evaluating (counts as a failure)


@dataclass
class ValidationReport:
    dataset_dir: Path
    success: bool
    n_images: int
    outcomes: list[ExpectationOutcome]
    seconds: float
    thresholds: dict[str, Any]  # validate.* (less out_dir), resolution, background, expected variants
    files: dict[str, str] = field(default_factory=dict)  # written outputs by kind
    images_per_type: dict[str, int] | None = None  # labelled datasets: images per type (an image per type it has)

    @property
    def failed(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    def metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n_images": self.n_images, "n_expectations": len(self.outcomes),
                               "n_failed": len(self.failed)}
        if self.images_per_type is not None:
            out["images_per_type"] = dict(self.images_per_type)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": str(self.dataset_dir),
            "success": self.success,
            **self.metrics(),
            "seconds": round(self.seconds, 3),
            "thresholds": self.thresholds,
            "expectations": [vars(o) for o in self.outcomes],
        }

    def summary_text(self) -> str:
        """A few lines for a terminal: the verdict, then each failed expectation with example rows."""
        head = (
            f"validation {'passed' if self.success else 'FAILED'}: {self.n_images} images, "
            f"{len(self.outcomes) - len(self.failed)}/{len(self.outcomes)} expectations met"
        )
        lines = [head]
        for outcome in self.failed:
            count = f"{outcome.unexpected_count} row(s)" if outcome.unexpected_count else "table"
            lines.append(f"  x {outcome.description} [{outcome.table}; {count}]")
            if outcome.error:
                lines.append(f"      error: {outcome.error}")
            if outcome.observed_value is not None and not outcome.failing:
                lines.append(f"      observed: {outcome.observed_value}")
            for row in outcome.failing[:_SHOWN_PER_EXPECTATION]:
                key = next((row[k] for k in ("path", "variant", "type") if k in row), None)  # the table's key column
                lines.append(f"      {key}: {row.get('value')!r}")
            if len(outcome.failing) > _SHOWN_PER_EXPECTATION:
                lines.append(f"      ... and {len(outcome.failing) - _SHOWN_PER_EXPECTATION} more")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Measuring the files
# ----------------------------------------------------------------------------------------------
def _measure(dataset_dir: Path, relative: str, background: RGB, max_pixels: int) -> dict[str, Any]:
    """Header facts and pixel statistics of one listed file; `file_error` set when it cannot be read.
    Pixels are decoded only when the header declares at most `max_pixels` (R x R)."""
    try:
        image = open_raster(read_in_folder(dataset_dir, relative), max_pixels=1 << 62)  # header only
        width, height, mode = image.width, image.height, image.mode
        if width * height > max_pixels:  # fails "exactly R px" by its header; not decoded
            return {"file_error": None, "width": width, "height": height, "mode": mode}
        with cpu_time_limit(DECODE_CPU_SECONDS, lambda: BadImageError("decoding took too long")):
            pixels = np.asarray(image.convert("RGB"))
    except Exception as exc:  # noqa: BLE001 - any failure to read is a finding about this file
        return {"file_error": f"{type(exc).__name__}: {exc}"}
    stats = pixel_stats(pixels, background)
    return {
        "file_error": None, "width": width, "height": height, "mode": mode, "mean": stats.mean,
        "std": stats.std, "background_fraction": stats.background_fraction, "sha256": stats.sha256,
    }


def inspect_files(dataset_dir: Path, manifest: pd.DataFrame, background: RGB = (255, 255, 255),
                  resolution: int = 1024) -> pd.DataFrame:
    """The images table: manifest identity columns + measurements taken from the files themselves
    (pixels of files of at most `resolution`^2 pixels)."""
    # A hand-made manifest may have only `path`: the other identity columns then default to empty.
    identity = pd.DataFrame({"path": manifest["path"].astype(str)})
    identity["source"] = manifest.get("source", "")
    identity["species_id"] = manifest.get("species_id", pd.Series(pd.NA, index=manifest.index, dtype="Int64"))
    identity["variant"] = manifest.get("variant", "normal")
    identity["manifest_sha256"] = manifest.get("sha256")
    identity["types"] = manifest.get(TYPES_COLUMN, "")
    measured = pd.DataFrame(
        [_measure(dataset_dir, relative, background, resolution * resolution) for relative in identity["path"]],
        columns=["file_error", "width", "height", "mode", "mean", "std", "background_fraction", "sha256"],
    )
    table = pd.concat([identity.reset_index(drop=True), measured], axis=1)
    for column in ("width", "height"):
        table[column] = table[column].astype("Int64")
    return table


def variant_counts(images: pd.DataFrame, expected: tuple[str, ...]) -> pd.DataFrame:
    """Images per variant label, including expected labels that have none (count 0)."""
    counts = images["variant"].value_counts()
    labels = sorted(set(counts.index) | set(expected))
    return pd.DataFrame({"variant": labels, "images": [int(counts.get(label, 0)) for label in labels]})


def type_counts(images: pd.DataFrame) -> pd.DataFrame:
    """Images per Pokémon type, every type listed (count 0 when absent); a two-type image counts for both.
    Cells that are not a valid label count for none (the images table's expectation names them)."""
    counts = dict.fromkeys(TYPES, 0)
    for text in images["types"].fillna(""):
        try:
            for name in parse_manifest_types(str(text)):
                counts[name] += 1
        except ValueError:
            continue
    return pd.DataFrame({"type": list(counts), "images": list(counts.values())})


# ----------------------------------------------------------------------------------------------
# The suites
# ----------------------------------------------------------------------------------------------
def build_suites(t: ValidateConfig, resolution: int, labelled: bool = False) -> dict[str, list]:
    """Expectations per table, each with a description that says what a failure means."""
    r = resolution
    images = [
        gxe.ExpectTableRowCountToBeBetween(
            min_value=t.min_images, description=f"dataset has at least {t.min_images} images (validate.min_images)"
        ),
        gxe.ExpectColumnValuesToBeNull(column="file_error", description="every listed file exists and decodes"),
        gxe.ExpectColumnValuesToBeUnique(column="path", description="each file is listed once in the manifest"),
        gxe.ExpectColumnValuesToBeBetween(
            column="width", min_value=r, max_value=r, description=f"width is exactly {r} px"
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="height", min_value=r, max_value=r, description=f"height is exactly {r} px"
        ),
        gxe.ExpectColumnValuesToBeInSet(column="mode", value_set=["RGB"], description="pixel mode is RGB"),
        gxe.ExpectColumnValuesToBeUnique(column="sha256", description="no two images have identical pixels"),
        gxe.ExpectColumnPairValuesToBeEqual(
            column_A="sha256", column_B="manifest_sha256", ignore_row_if="either_value_is_missing",
            description="pixels unchanged since ingest (hash equals the manifest's)",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="species_id", min_value=1, max_value=t.max_species_id,
            description=f"species id in 1..{t.max_species_id} (validate.max_species_id)",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="background_fraction", max_value=t.max_background_fraction,
            description=(
                f"not almost all background (<= {t.max_background_fraction:.0%}, validate.max_background_fraction)"
            ),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="std", min_value=t.min_pixel_std,
            description=f"not almost uniform (pixel std >= {t.min_pixel_std}, validate.min_pixel_std)",
        ),
    ]
    variants = [
        gxe.ExpectColumnValuesToBeBetween(
            column="images", min_value=t.min_per_variant,
            description=f"each variant has at least {t.min_per_variant} images (validate.min_per_variant)",
        ),
    ]
    suites = {SUITE_IMAGES: images, SUITE_VARIANTS: variants}
    if labelled:
        images.append(gxe.ExpectColumnValuesToMatchRegex(
            column="types", regex=TYPES_PATTERN,
            description="every image labelled with one or two known Pokémon types (manifest column types)"))
        suites[SUITE_TYPES] = [gxe.ExpectColumnValuesToBeBetween(
            column="images", min_value=t.min_per_type,
            description=f"each of the {len(TYPES)} types has at least {t.min_per_type} images (validate.min_per_type)",
        )]
    return suites


def _outcome(table: str, key: str, result: dict[str, Any]) -> ExpectationOutcome:
    config = result["expectation_config"]
    kwargs = {k: v for k, v in config["kwargs"].items() if k != "batch_id"}
    column = kwargs.get("column") or kwargs.get("column_A")
    details = result.get("result") or {}
    failing = []
    for row in details.get("unexpected_index_list") or []:
        value = row.get(column) if column else None
        if "column_A" in kwargs:
            value = {"file": row.get(kwargs["column_A"]), "manifest": row.get(kwargs["column_B"])}
        failing.append({key: row.get(key), "value": _plain(value)})
    exception = result.get("exception_info") or {}
    error = exception.get("exception_message") if exception.get("raised_exception") else None
    return ExpectationOutcome(
        table=table,
        expectation=config["type"],
        column=column,
        description=config.get("description") or config["type"],
        kwargs=_plain(kwargs),
        success=bool(result["success"]),
        unexpected_count=details.get("unexpected_count"),
        failing=failing,
        observed_value=_plain(details.get("observed_value")),
        error=error,
    )


def _plain(value: Any) -> Any:
    """JSON-safe python values (numpy scalars, pandas NA) for the result file."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    return value


def _run_suites(
    tables: dict[str, tuple[pd.DataFrame, str]], checks: ValidateConfig, resolution: int, docs_dir: Path | None
) -> list[ExpectationOutcome]:
    labelled = "types" in tables
    """Run each suite on its table in a throwaway file context; copy its Data Docs to `docs_dir`."""
    outcomes: list[ExpectationOutcome] = []
    with tempfile.TemporaryDirectory(prefix="pokediff-gx-") as project:
        context = gx.get_context(mode="file", project_root_dir=project)
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        source = context.data_sources.add_pandas("pokediff_dataset")
        for suite_name, expectations in build_suites(checks, resolution, labelled).items():
            table_name = suite_name.removeprefix("pokediff_")
            frame, key = tables[table_name]
            batch = source.add_dataframe_asset(table_name).add_batch_definition_whole_dataframe("whole table")
            suite = context.suites.add(gx.ExpectationSuite(name=suite_name))
            for expectation in expectations:
                suite.add_expectation(expectation)
            definition = context.validation_definitions.add(
                gx.ValidationDefinition(data=batch, suite=suite, name=f"{table_name} of the ingested dataset")
            )
            result = definition.run(
                batch_parameters={"dataframe": frame},
                result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [key]},
            )
            # GX returns results grouped by metric, not in suite order; report them as written above.
            position = {expectation.id: i for i, expectation in enumerate(suite.expectations)}
            results = sorted(result.to_json_dict()["results"], key=lambda r: position[r["expectation_config"]["id"]])
            outcomes += [_outcome(table_name, key, r) for r in results]
        if docs_dir is not None:
            context.build_data_docs()
            site = Path(project, "gx", "uncommitted", "data_docs", "local_site")
            shutil.rmtree(docs_dir, ignore_errors=True)
            shutil.copytree(site, docs_dir)
    return outcomes


def validate_dataset(
    dataset_dir: str | Path, checks: ValidateConfig, out_dir: str | Path | None = None, *, resolution: int,
    background: RGB = (255, 255, 255), expected_variants: tuple[str, ...] = (), labelled: bool = False,
) -> ValidationReport:
    """Check the dataset in `dataset_dir` (manifest.csv + images); write results to `out_dir`.

    checks: the validate section of params (its out_dir is not read here). The dataset's own facts:
    `resolution` (data.resolution), the `background` it was composited on, and the variant labels it
    must contain (`expected_variants`, from the ingest settings; present labels are always checked),
    and whether every image must carry type labels (`labelled`: the sprites; adds the types table).
    Never raises for a bad dataset (that is a failed report); raises FileNotFoundError when there is
    no manifest to validate, ManifestError when it is not a manifest (malformed CSV, too large).
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    started = time.perf_counter()
    dataset_dir = Path(dataset_dir)
    manifest_path = dataset_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no {MANIFEST_NAME} in {dataset_dir}: run `pokediff ingest` first")
    images = inspect_files(dataset_dir, read_manifest(manifest_path), background, resolution)
    tables = {
        "images": (images, "path"),
        "variants": (variant_counts(images, expected_variants), "variant"),
    }
    if labelled:
        tables["types"] = (type_counts(images), "type")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    outcomes = _run_suites(tables, checks, resolution, out / DATA_DOCS_DIR if out is not None else None)
    thresholds = {"resolution": resolution, **checks.model_dump(exclude={"out_dir"}), "background": list(background),
                  "expected_variants": list(expected_variants)}
    report = ValidationReport(
        dataset_dir, all(o.success for o in outcomes), len(images), outcomes, time.perf_counter() - started, thresholds
    )
    if labelled:
        per_type = tables["types"][0]
        report.images_per_type = dict(zip(per_type["type"], per_type["images"].astype(int).tolist()))
    if out is not None:
        write_json(report.to_json(), out / RESULT_NAME)
        write_json(report.metrics(), out / METRICS_NAME)
        report.files = {
            "result": str(out / RESULT_NAME),
            "metrics": str(out / METRICS_NAME),
            "data_docs": str(out / DATA_DOCS_DIR / "index.html"),
            "results_html": str(write_static_results(report, out / DATA_DOCS_DIR)),
        }
    return report


# ----------------------------------------------------------------------------------------------
# A results page that needs no network
# ----------------------------------------------------------------------------------------------
STATIC_RESULTS_NAME = "results.html"
_ROWS_PER_EXPECTATION = 50


def write_static_results(report: ValidationReport, docs_dir: Path) -> Path:
    """data_docs/results.html: every expectation with its verdict and failing rows, as plain HTML with
    inline styles. GX's index.html fills its list of validation runs with scripts from public CDNs, so
    offline it shows an empty table; this page (and the GX pages it links to) open without network."""
    docs_dir.mkdir(parents=True, exist_ok=True)
    gx_pages = sorted(p.relative_to(docs_dir).as_posix() for p in (docs_dir / "validations").rglob("*.html"))
    verdict = "passed" if report.success else "FAILED"
    colour = "#1a7f37" if report.success else "#cf222e"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>pokediff validation</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:70em}td,th{border:1px solid #ccc;padding:4px 8px;"
        "vertical-align:top;text-align:left}table{border-collapse:collapse}.ok{color:#1a7f37}.bad{color:#cf222e}"
        "</style></head><body>",
        f"<h1>Dataset validation <span style='color:{colour}'>{verdict}</span></h1>",
        f"<p>{escape(str(report.dataset_dir))}: {report.n_images} images, "
        f"{len(report.outcomes) - len(report.failed)}/{len(report.outcomes)} expectations met "
        f"({report.seconds:.1f} s).</p>",
        "<table><tr><th></th><th>table</th><th>expectation</th><th>observed</th><th>failing rows</th></tr>",
    ]
    for o in report.outcomes:
        mark = "<span class='ok'>&#10003;</span>" if o.success else "<span class='bad'>&#10007;</span>"
        observed = "" if o.observed_value is None else escape(str(o.observed_value)[:200])
        rows = [f"{escape(str(r.get('path', r.get('variant'))))}: {escape(repr(r.get('value'))[:100])}"
                for r in o.failing[:_ROWS_PER_EXPECTATION]]
        if len(o.failing) > _ROWS_PER_EXPECTATION:
            rows.append(f"... and {len(o.failing) - _ROWS_PER_EXPECTATION} more (validation_result.json)")
        if o.error:
            rows.insert(0, f"error: {escape(o.error[:300])}")
        parts.append(f"<tr><td>{mark}</td><td>{escape(o.table)}</td><td>{escape(o.description)}<br><small>"
                     f"{escape(o.expectation)}</small></td><td>{observed}</td><td>{'<br>'.join(rows)}</td></tr>")
    parts.append("</table>")
    if gx_pages:
        parts.append("<h2>Great Expectations pages</h2><ul>")
        parts += [f"<li><a href='{escape(page)}'>{escape(page)}</a></li>" for page in gx_pages]
        parts.append("</ul>")
    parts.append("</body></html>\n")
    path = docs_dir / STATIC_RESULTS_NAME
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
