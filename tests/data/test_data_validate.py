"""validate: the Great Expectations suite passes on the real sprites and names the exact bad files."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pokediff.config import ValidateConfig
from pokediff.data.decode import WHITE
from pokediff.data.manifest import ManifestRow, pixel_stats, read_manifest, write_manifest
from pokediff.data.validation import validate_dataset
from pokediff.pokemon_types import TYPES

SMALL = ValidateConfig(min_images=10, min_per_variant=1)
SPRITES = {"resolution": 64, "expected_variants": ("normal", "shiny")}  # what the real ingested sprites are


def failing_paths(report, description_start: str) -> set[str]:
    """Paths (or variants) behind the one failed expectation whose description starts so."""
    [outcome] = [o for o in report.outcomes if o.description.startswith(description_start)]
    assert not outcome.success
    return {row.get("path", row.get("variant")) for row in outcome.failing}


def row_for(dataset: Path, relative: str, template: ManifestRow) -> ManifestRow:
    """A manifest row that tells the truth about the file (as ingest would have written it)."""
    with Image.open(dataset / relative) as image:
        size, mode, pixels = image.size, image.mode, np.asarray(image.convert("RGB"))
    stats = pixel_stats(pixels, WHITE)
    return ManifestRow(**{
        **asdict(template), "path": relative, "width": size[0], "height": size[1], "mode": mode,
        "mean": stats.mean, "std": stats.std, "background_fraction": stats.background_fraction,
        "sha256": stats.sha256,
    })


def manifest_rows(dataset: Path) -> list[ManifestRow]:
    frame = read_manifest(dataset / "manifest.csv")
    frame["species_id"] = frame["species_id"].astype(object).where(frame["species_id"].notna(), None)
    return [ManifestRow(**record) for record in frame.to_dict("records")]


@pytest.fixture
def small_real_dataset(sprites_dataset: Path, tmp_path: Path) -> Path:
    """The first 20 real ingested images with their manifest rows: a good dataset to spoil."""
    out = tmp_path / "small"
    (out / "images").mkdir(parents=True)
    rows = manifest_rows(sprites_dataset)[:20]
    for row in rows:
        shutil.copy(sprites_dataset / row.path, out / row.path)
    write_manifest(rows, out / "manifest.csv", labelled=True)
    return out


@pytest.fixture
def crafted_bad_dataset(small_real_dataset: Path) -> Path:
    """Wrong size, an exact duplicate, a blank image and a grayscale image among good real ones."""
    out = small_real_dataset
    rows = manifest_rows(out)
    template = rows[0]
    with Image.open(out / rows[3].path) as image:
        image.resize((60, 60), Image.Resampling.LANCZOS).save(out / "images" / "wrong_size.png")
        image.convert("L").save(out / "images" / "gray.png")
    shutil.copy(out / rows[5].path, out / "images" / "dup_of_5.png")
    Image.new("RGB", (64, 64), (255, 255, 255)).save(out / "images" / "blank.png")
    extra = ["images/wrong_size.png", "images/gray.png", "images/dup_of_5.png", "images/blank.png"]
    write_manifest(rows + [row_for(out, relative, template) for relative in extra], out / "manifest.csv")
    return out


def test_real_sprites_pass_through_the_cli(sprites_dataset: Path, tmp_path: Path, pokediff_cli,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "validation"
    code = pokediff_cli("validate", "-S", f"data.out_dir={sprites_dataset}", "-S", f"validate.out_dir={out}")
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert "validation passed" in stdout
    result = json.loads((out / "validation_result.json").read_text())
    metrics = json.loads((out / "validation_metrics.json").read_text())
    n_images = len(read_manifest(sprites_dataset / "manifest.csv"))
    per_type = metrics.pop("images_per_type")  # the sprites are labelled: images per type, every type
    assert metrics == {"n_images": n_images, "n_expectations": 14, "n_failed": 0}
    assert set(per_type) == set(TYPES) and min(per_type.values()) >= 50
    assert sum(per_type.values()) == sum(len(t.split(";")) for t in read_manifest(
        sprites_dataset / "manifest.csv")["types"])
    assert result["success"] and all(e["success"] and e["failing"] == [] for e in result["expectations"])
    assert {e["table"] for e in result["expectations"]} == {"images", "variants", "types"}
    # the validate section as given (less out_dir) and the dataset's own facts, as the file always held them
    assert result["thresholds"] == {
        "resolution": 64, "min_images": 1000, "min_per_variant": 100, "min_per_type": 50, "max_species_id": 1025,
        "max_background_fraction": 0.97, "min_pixel_std": 3.0, "background": [255, 255, 255],
        "expected_variants": ["normal", "shiny"]}
    assert "pokediff_images" in (out / "data_docs" / "index.html").read_text()


def test_crafted_bad_dataset_fails_naming_exactly_the_bad_files(crafted_bad_dataset: Path, tmp_path: Path) -> None:
    report = validate_dataset(crafted_bad_dataset, SMALL, tmp_path / "validation", **SPRITES)
    assert not report.success
    assert failing_paths(report, "width is exactly 64") == {"images/wrong_size.png"}
    assert failing_paths(report, "height is exactly 64") == {"images/wrong_size.png"}
    assert failing_paths(report, "pixel mode is RGB") == {"images/gray.png"}
    duplicated = read_manifest(crafted_bad_dataset / "manifest.csv")["path"][5]
    assert failing_paths(report, "no two images have identical pixels") == {duplicated, "images/dup_of_5.png"}
    assert failing_paths(report, "not almost all background") == {"images/blank.png"}
    assert failing_paths(report, "not almost uniform") == {"images/blank.png"}
    assert len(report.failed) == 6  # and nothing else: the good images and the other checks pass
    written = json.loads((tmp_path / "validation" / "validation_result.json").read_text())
    assert written["n_failed"] == 6 and not written["success"]
    assert json.loads((tmp_path / "validation" / "validation_metrics.json").read_text())["n_failed"] == 6


def test_cli_on_the_bad_dataset_exits_1_with_a_short_summary(crafted_bad_dataset: Path, tmp_path: Path,
                                                             pokediff_cli, capsys) -> None:
    code = pokediff_cli(
        "validate", "--dataset-dir", str(crafted_bad_dataset), "--out-dir", str(tmp_path / "v"),
        "-S", "validate.min_images=10", "-S", "validate.min_per_variant=1",
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "validation FAILED: 24 images, 6/12 expectations met" in err
    for name in ("wrong_size.png", "gray.png", "dup_of_5.png", "blank.png"):
        assert f"images/{name}" in err


def test_files_changed_or_deleted_after_ingest_are_caught(small_real_dataset: Path) -> None:
    rows = manifest_rows(small_real_dataset)
    with Image.open(small_real_dataset / rows[1].path) as other:
        other.save(small_real_dataset / rows[2].path)  # row 2's file now holds row 1's pixels
    (small_real_dataset / rows[4].path).unlink()
    report = validate_dataset(small_real_dataset, SMALL, **SPRITES)
    assert failing_paths(report, "every listed file exists") == {rows[4].path}
    assert failing_paths(report, "pixels unchanged since ingest") == {rows[2].path}
    assert failing_paths(report, "no two images have identical pixels") == {rows[1].path, rows[2].path}


def test_species_range_and_variant_minimums(small_real_dataset: Path) -> None:
    rows = manifest_rows(small_real_dataset)
    rows[0] = ManifestRow(**{**asdict(rows[0]), "species_id": 2000})
    write_manifest(rows, small_real_dataset / "manifest.csv")
    report = validate_dataset(small_real_dataset, SMALL, resolution=64, expected_variants=("normal", "back"))
    assert failing_paths(report, "species id in 1..1025") == {rows[0].path}
    assert failing_paths(report, "each variant has at least 1 images") == {"back"}
    [variants] = [o for o in report.outcomes if o.table == "variants"]
    assert variants.failing == [{"variant": "back", "value": 0}]


def test_too_few_images_fails_on_the_count(small_real_dataset: Path) -> None:
    report = validate_dataset(small_real_dataset, ValidateConfig(min_images=1000, min_per_variant=1), resolution=64)
    [count] = report.failed
    assert count.observed_value == 20 and "at least 1000 images" in count.description


def test_type_labels_and_per_type_minimums(small_real_dataset: Path, tmp_path: Path) -> None:
    rows = manifest_rows(small_real_dataset)
    rows[0] = ManifestRow(**{**asdict(rows[0]), "types": ""})  # unlabelled
    rows[1] = ManifestRow(**{**asdict(rows[1]), "types": "fire;sound"})  # not a type
    write_manifest(rows, small_real_dataset / "manifest.csv", labelled=True)
    report = validate_dataset(small_real_dataset, SMALL.model_copy(update={"min_per_type": 1}), tmp_path / "v",
                              resolution=64, labelled=True)
    assert failing_paths(report, "every image labelled") == {rows[0].path, rows[1].path}
    [types] = [o for o in report.outcomes if o.table == "types"]
    present = {t for row in rows[2:] for t in row.types.split(";")}
    assert {row["type"] for row in types.failing} == set(TYPES) - present  # each type short of 1 image named
    shown = report.summary_text()
    for row in types.failing[:3]:  # the printed report names each type short of images, not None
        assert f"      {row['type']}: 0" in shown, shown
    assert report.images_per_type["grass"] == sum("grass" in row.types.split(";") for row in rows[2:])
    metrics = json.loads((tmp_path / "v" / "validation_metrics.json").read_text())
    assert metrics["images_per_type"] == report.images_per_type
    unlabelled = validate_dataset(small_real_dataset, SMALL, resolution=64)  # a user's folder: no type checks
    assert unlabelled.images_per_type is None and "types" not in {o.table for o in unlabelled.outcomes}


def test_missing_manifest_is_a_clear_error(tmp_path: Path, pokediff_cli, capsys) -> None:
    assert pokediff_cli("validate", "--dataset-dir", str(tmp_path), "--out-dir", str(tmp_path / "v")) == 1
    assert "run `pokediff ingest` first" in capsys.readouterr().err
