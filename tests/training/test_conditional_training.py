"""A type-conditional model end to end on the CPU: train a few steps through `pokediff train`, sample each
requested type through `pokediff sample`, and the one-line errors around it."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import TINY_CLI_OVERRIDES
from pokediff.checkpoint import load_model
from pokediff.cli import main as pokediff_main
from pokediff.data.manifest import ManifestRow, pixel_stats, write_manifest
from pokediff.pixels import pixel_sha256

COLOURS = {"fire": (230, 60, 30), "water": (40, 90, 230), "grass;poison": (60, 180, 60)}


def run_cli(*argv: str) -> int:
    return pokediff_main([argv[0], "--params", "none", *argv[1:]])


@pytest.fixture(scope="module")
def labelled_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset as ingest writes it, 16x16, with a types column: blobs coloured by type, 8 per label."""
    out = tmp_path_factory.mktemp("labelled")
    (out / "images").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        types = list(COLOURS)[i % 3]
        pixels = np.full((16, 16, 3), 255, np.uint8)
        top, left = rng.integers(0, 6, 2)
        pixels[top:top + 10, left:left + 10] = COLOURS[types]
        pixels = np.clip(pixels.astype(int) + rng.integers(-10, 10, pixels.shape), 0, 255).astype(np.uint8)
        relative = f"images/{i:06d}.png"
        Image.fromarray(pixels).save(out / relative)
        stats = pixel_stats(pixels, (255, 255, 255))
        rows.append(ManifestRow(relative, f"{i}.png", i + 1, "", "normal", 0, 1, 16, 16, "RGB", stats.mean,
                                stats.std, stats.background_fraction, pixel_sha256(pixels), types))
    write_manifest(rows, out / "manifest.csv", labelled=True)
    return out


@pytest.fixture(scope="module")
def conditional_model(labelled_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train")
    code = run_cli("train", "--data", str(labelled_dataset), "--out-dir", str(out), "--no-track", "--no-progress",
                   *TINY_CLI_OVERRIDES, "-S", "model.condition=type", "-S", "train.steps=40",
                   "-S", "train.batch_size=8",
                   "-S", "train.lr=0.002", "-S", "train.warmup_steps=4", "-S", "train.eval_every=0",
                   "-S", "diffusion.timesteps=100")
    assert code == 0
    return out / "model.safetensors"


def _sample(model: Path, out: Path, *extra: str) -> tuple[torch.Tensor, list[dict[str, str]]]:
    code = run_cli("sample", "--checkpoint", str(model), "--out", str(out / "grid.png"), "--steps", "8",
                   "--num-images", "6", "--seed", "3", "-S", "diffusion.timesteps=100", *extra)
    assert code == 0
    images = torch.stack([torch.from_numpy(np.array(Image.open(p))).float()
                          for p in sorted((out / "grid_images").glob("*.png"))])
    with (out / "labels.csv").open() as f:
        return images, list(csv.DictReader(f))


@pytest.mark.slow
def test_conditional_model_samples_each_requested_type(conditional_model: Path, tmp_path: Path) -> None:
    model, cfg, _, step = load_model(conditional_model)
    assert cfg.condition == "type" and step == 40 and model.conditional
    fire, labels = _sample(conditional_model, tmp_path / "a", "--type", "fire", "--type", "Water/Flying",
                           "--guidance", "2")
    assert [row["type"] for row in labels] == ["fire", "water/flying"] * 3  # in turn, as asked
    assert (tmp_path / "a" / "type_grid.png").is_file()
    water, _ = _sample(conditional_model, tmp_path / "b", "--type", "water", "--guidance", "2")
    plain, _ = _sample(conditional_model, tmp_path / "c", "--type", "fire", "--guidance", "0")
    # same seed, same starting noise: only the label (or the guidance) differs, so the label path is used
    assert (fire[0] - water[0]).abs().mean() > 1.0
    assert (fire[0] - plain[0]).abs().mean() > 1.0
    every, labels = _sample(conditional_model, tmp_path / "d")  # no type: all 18 in turn
    assert [row["type"] for row in labels] == ["normal", "fire", "water", "grass", "electric", "ice"]


@pytest.mark.slow
def test_one_line_errors_for_types_on_the_wrong_model(conditional_model: Path, labelled_dataset: Path,
                                                      tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("sample", "--checkpoint", str(conditional_model), "--type", "fyre") == 2
    assert "unknown type 'fyre'" in capsys.readouterr().err
    plain_dir = tmp_path / "plain"
    assert run_cli("train", "--data", str(labelled_dataset), "--out-dir", str(plain_dir), "--no-track",
                   "--no-progress", *TINY_CLI_OVERRIDES, "-S", "train.steps=2", "-S", "train.batch_size=4",
                   "-S", "diffusion.timesteps=100") == 0
    capsys.readouterr()
    for flag, words in ((("--type", "water"), "unconditional"), (("--guidance", "2"), "guidance needs a type")):
        code = run_cli("sample", "--checkpoint", str(plain_dir / "model.safetensors"), "--num-images", "1",
                       "--steps", "2", "--out", str(tmp_path / "x.png"), "-S", "diffusion.timesteps=100", *flag)
        err = capsys.readouterr().err
        assert code == 2 and words in err and err.count("\n") == 1, err
    (tmp_path / "unlabelled").mkdir()
    Image.new("RGB", (16, 16), "red").save(tmp_path / "unlabelled" / "a.png")
    assert run_cli("train", "--data", str(tmp_path / "unlabelled"), "--out-dir", str(tmp_path / "t"), "--no-track",
                   *TINY_CLI_OVERRIDES, "-S", "model.condition=type", "-S", "train.steps=1") == 1
    err = capsys.readouterr().err
    assert "no type labels" in err and err.count("\n") == 1
