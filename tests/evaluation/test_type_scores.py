"""Per-type FID: `pokediff ref-stats --per-type` and the score stage's type_metrics.json, end to end."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from pokediff.cli import main
from pokediff.evaluation.evaluator import FIDEvaluator

TYPES_OF = ["fire"] * 6 + ["water"] * 6 + ["fire;water"] * 4  # 16 training images: 10 fire, 10 water


def _save(images, folder, names) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for img, name in zip(images, names, strict=True):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / name)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, train_images):
    root = tmp_path_factory.mktemp("types")
    _save(train_images[:16], root / "dataset" / "images", [f"{i:06d}.png" for i in range(16)])
    (root / "dataset" / "manifest.csv").write_text(
        "path,variant,types\n" + "".join(f"images/{i:06d}.png,normal,{t}\n" for i, t in enumerate(TYPES_OF)))
    # samples: copies of training images 0-3 asked for as fire, 6-9 as water
    picks = [0, 1, 2, 3, 6, 7, 8, 9]
    _save(train_images[picks], root / "samples" / "images", [f"{i:06d}.png" for i in range(8)])
    (root / "samples" / "labels.csv").write_text(
        "image,type\n" + "".join(f"{i:06d}.png,{'fire' if i < 4 else 'water'}\n" for i in range(8)))
    (root / "params.yaml").write_text("score:\n  batch_size: 8\n  kid_subsets: 5\n  device: cpu\n")
    return root


def test_per_type_reference_stats_and_scores(workspace, train_images, capsys) -> None:
    p, types_dir = str(workspace / "params.yaml"), workspace / "ref_types"
    common = ["--params", p, "--data", str(workspace / "dataset"), "--quiet"]
    assert main(["ref-stats", *common, "--per-type", "--out", str(types_dir), "-S", "model.condition=type"]) == 0
    index = json.loads((types_dir / "index.json").read_text())
    assert {k: v["n"] for k, v in index.items()} == {"fire": 10, "water": 10}  # a two-type image is in both
    assert main(["ref-stats", *common, "--out", str(workspace / "ref.npz")]) == 0
    out = workspace / "score" / "metrics.json"
    assert main(["score", "--params", p, "--samples", str(workspace / "samples" / "images"), "--ref",
                 str(workspace / "ref.npz"), "--ref-types", str(types_dir), "--out", str(out), "--quiet",
                 "--no-track"]) == 0
    per_type = json.loads((out.parent / "type_metrics.json").read_text())
    assert set(per_type) == {"fire", "water"}
    assert per_type["fire"]["num_samples"] == 4 and per_type["fire"]["num_reference"] == 10
    # the same number as scoring the fire samples alone against fire.npz
    direct = FIDEvaluator(types_dir / "fire.npz", device="cpu", batch_size=8, kid_subsets=5).score(train_images[:4])
    assert per_type["fire"]["fid"] == pytest.approx(direct["fid"], rel=1e-6)
    metrics = json.loads(out.read_text())
    assert metrics["fid_type_mean"] == pytest.approx((per_type["fire"]["fid"] + per_type["water"]["fid"]) / 2)
    assert "score per type" in capsys.readouterr().out


def test_an_unconditional_model_gets_empty_per_type_outputs(workspace, capsys) -> None:
    types_dir = workspace / "ref_types_none"
    assert main(["ref-stats", "--params", str(workspace / "params.yaml"), "--data", str(workspace / "dataset"),
                 "--per-type", "--out", str(types_dir), "--quiet"]) == 0
    assert json.loads((types_dir / "index.json").read_text()) == {} and not list(types_dir.glob("*.npz"))
    assert "nothing to compute" in capsys.readouterr().out
