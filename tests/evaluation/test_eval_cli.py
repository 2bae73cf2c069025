"""The ref-stats, score and fid stages end to end through `pokediff.cli.main`, and their params."""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

from pokediff.cli import main
from pokediff.config import ConfigError, load_params


def _save(images, folder) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i:06d}.png")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, train_images, fresh_images):
    root = tmp_path_factory.mktemp("cli")
    _save(train_images[:16], root / "dataset" / "images")
    (root / "dataset" / "manifest.csv").write_text(
        "path,variant\n" + "".join(f"images/{i:06d}.png,normal\n" for i in range(16))
    )
    # "Samples": 4 exact copies of training images, then 4 fresh creatures.
    _save(list(train_images[[2, 5, 7, 11]]) + list(fresh_images[:4]), root / "samples")
    (root / "params.yaml").write_text("score:\n  batch_size: 8\n  kid_subsets: 5\n  device: cpu\n")
    return root


def test_ref_stats_then_score(workspace, capsys) -> None:
    p = str(workspace / "params.yaml")
    ref = workspace / "ref" / "ref_stats.npz"
    assert main(["ref-stats", "--params", p, "--data", str(workspace / "dataset"), "--out", str(ref),
                 "--quiet"]) == 0
    assert "16 images" in capsys.readouterr().out and ref.is_file()

    # --num-samples 6: the first 6 of 8 samples, i.e. the 4 copies and 2 fresh creatures.
    out = workspace / "score" / "metrics.json"
    assert main(["score", "--params", p, "--samples", str(workspace / "samples"), "--ref", str(ref),
                 "--out", str(out), "--num-samples", "6", "--quiet", "--no-track"]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["num_samples"] == 6 and metrics["num_reference"] == 16
    assert metrics["kid_subset_size"] == 6
    assert metrics["fid"] > 0 and all(isinstance(v, (int, float)) for v in metrics.values())
    # The 4 copies, at least, are closer to a training image than the median training pair.
    assert metrics["memorisation_share_below_train_nn"] >= 4 / 6
    rows = list(csv.DictReader((out.parent / "nearest.csv").open()))
    assert len(rows) == 6
    copies = {r["sample"]: r for r in rows[:4]}  # closest first
    assert set(copies) == {"000000.png", "000001.png", "000002.png", "000003.png"}
    assert copies["000001.png"]["nearest_reference"] == "images/000005.png"
    assert all(r["below_train_nn_median"] == "1" for r in copies.values())


def test_fid_between_folders(workspace, capsys) -> None:
    out = workspace / "fid.json"
    code = main(["fid", str(workspace / "samples"), str(workspace / "dataset"), "--kid", "--out", str(out),
                 "--params", str(workspace / "params.yaml"), "--max-images", "6", "--quiet"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads(out.read_text())
    assert printed == saved and saved["num_a"] == saved["num_b"] == 6 and saved["kid_subset_size"] == 6
    assert saved["fid"] > 0 and "kid_mean" in saved


def test_stage_errors_are_reported(workspace, capsys) -> None:
    p = str(workspace / "params.yaml")
    assert main(["score", "--params", p, "--samples", str(workspace / "samples"),
                 "--ref", str(workspace / "missing.npz"), "--quiet", "--no-track"]) == 1
    assert "missing.npz" in capsys.readouterr().err
    assert main(["fid", str(workspace / "nope"), str(workspace / "samples"), "--params", p]) == 1
    assert "nope" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("score.ref_max_images=-1", "score.ref_max_images"),
        ("score.batch_size=0", "score.batch_size"),
        ("score.device=gpu", "score.device"),
        ("score.kid_subsets=0", "score.kid_subsets"),
    ],
)
def test_bad_score_params_name_the_key(tmp_path, override, key) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_params("none", [override])


def test_flags_are_validated_like_params(workspace, capsys) -> None:
    code = main(["ref-stats", "--params", str(workspace / "params.yaml"), "--max-images", "-3"])
    assert code == 2 and "score.ref_max_images" in capsys.readouterr().err
