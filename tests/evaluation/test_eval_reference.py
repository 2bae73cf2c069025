"""Reference statistics as a cached output, and image folders / manifests."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from pokediff.data.image_folder import list_images, load_image_folder, read_image, subset_indices
from pokediff.evaluation import reference as reference_module
from pokediff.evaluation.evaluator import FIDEvaluator
from pokediff.evaluation.frechet import gaussian_stats
from pokediff.evaluation.memorisation import train_nn_distances
from pokediff.evaluation.reference import compute_reference_stats, load_reference_stats
from pokediff.pixels import content_hash


def load_for_scoring(folder, **subset):
    """A folder as scoring reads it: each image at its own size, any unreadable file an error."""
    return load_image_folder(folder, resolution=None, on_error="raise", **subset)


def save_folder(images: torch.Tensor, folder, names=None) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"{i:04d}.png" for i in range(len(images))]
    for img, name in zip(images, names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / name)
    return names


# ----------------------------------------------------------------------------------------------
# Image folders
# ----------------------------------------------------------------------------------------------
def test_folder_round_trip_is_lossless_and_sorted(tmp_path, train_images) -> None:
    save_folder(train_images[:3], tmp_path, ["b/1.png", "a.png", "c.PNG"])
    (tmp_path / "notes.txt").write_text("not an image")
    images, paths = load_for_scoring(tmp_path)
    assert paths == ["a.png", "b/1.png", "c.PNG"]
    assert torch.equal(torch.stack(images), train_images[[1, 0, 2]])


def test_manifest_decides_files_and_order(tmp_path, train_images) -> None:
    save_folder(train_images[:3], tmp_path / "images")
    (tmp_path / "stray.png").write_bytes((tmp_path / "images" / "0000.png").read_bytes())
    with (tmp_path / "manifest.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "variant"])
        w.writerows([["images/0002.png", "shiny"], ["images/0000.png", "normal"]])
    assert [p.name for p in list_images(tmp_path)[0]] == ["0002.png", "0000.png"]


def test_manifest_errors_name_the_file(tmp_path) -> None:
    (tmp_path / "manifest.csv").write_text("file\nx.png\n")
    with pytest.raises(ValueError, match=r"manifest.csv: no 'path' column in the header"):
        list_images(tmp_path)
    (tmp_path / "manifest.csv").write_text("path\nmissing.png\n")
    with pytest.raises(FileNotFoundError, match="1 listed files are missing, e.g. .*missing.png"):
        load_for_scoring(tmp_path)


def test_empty_or_missing_folder(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no images"):
        load_for_scoring(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        list_images(tmp_path / "nope")


def test_transparency_is_composited_on_white_and_bad_files_named(tmp_path) -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # one opaque pixel, the rest fully transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    img = read_image(tmp_path / "t.png")
    assert img.shape == (4, 4, 3) and img.dtype == np.uint8
    assert img[0, 0].tolist() == [10, 20, 30] and img[1, 1].tolist() == [255, 255, 255]
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png: cannot read image"):
        load_for_scoring(tmp_path)


def test_subset_is_deterministic() -> None:
    a = subset_indices(100, 10, seed=0)
    assert len(a) == 10 and np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(a, subset_indices(100, 10, seed=0))
    assert not np.array_equal(a, subset_indices(100, 10, seed=1))
    np.testing.assert_array_equal(subset_indices(5, 0), np.arange(5))
    np.testing.assert_array_equal(subset_indices(100, 3, how="first"), [0, 1, 2])
    with pytest.raises(ValueError, match="max_images"):
        subset_indices(5, -1)


def test_content_hash_follows_pixels_not_names(tmp_path, train_images) -> None:
    save_folder(train_images[:2], tmp_path / "x", ["p.png", "q.png"])
    save_folder(train_images[:2], tmp_path / "y", ["1.png", "2.png"])
    hx = content_hash(load_for_scoring(tmp_path / "x")[0])
    assert hx == content_hash(load_for_scoring(tmp_path / "y")[0]) == content_hash(train_images[:2])
    changed = train_images[:2].clone()
    changed[1, 0, 0, 0] ^= 1
    assert content_hash(changed) != hx
    assert content_hash(train_images[[1, 0]]) != hx


# ----------------------------------------------------------------------------------------------
# Reference statistics
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ref_path(tmp_path_factory, train_images):
    """Stats of the 32 training images, computed from a folder once for this module."""
    folder = tmp_path_factory.mktemp("dataset")
    save_folder(train_images, folder / "images")
    with (folder / "manifest.csv").open("w", newline="") as fh:
        fh.write("path\n" + "".join(f"images/{i:04d}.png\n" for i in range(len(train_images))))
    out = folder.parent / f"{folder.name}-stats" / "ref_stats.npz"
    compute_reference_stats(folder, out, batch_size=16, device="cpu")
    return out


def test_saved_stats_match_the_features(ref_path, train_images, train_features) -> None:
    stats = load_reference_stats(ref_path)
    assert stats.n == 32 and stats.extractor == "inception-2015-12-05/pool3/tf1"
    assert stats.content_hash == content_hash(train_images)
    assert stats.paths[0] == "images/0000.png" and len(stats.paths) == 32
    assert stats.mu.dtype == stats.sigma.dtype == np.float64 and stats.features.dtype == np.float32
    assert stats.sigma.shape == (2048, 2048)
    np.testing.assert_allclose(stats.features, train_features, atol=1e-5)
    mu, sigma = gaussian_stats(stats.features)
    np.testing.assert_allclose(stats.mu, mu, rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, sigma, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(stats.train_nn, train_nn_distances(stats.features))


def test_stats_are_a_cache(ref_path, train_images, monkeypatch) -> None:
    def no_inception(*args, **kwargs):
        raise AssertionError("Inception ran although the stats file was up to date")

    monkeypatch.setattr(reference_module, "extract_features", no_inception)
    before = ref_path.stat().st_mtime_ns
    stats = compute_reference_stats(train_images, ref_path, device="cpu")
    assert stats.n == 32 and ref_path.stat().st_mtime_ns == before
    # Different pixels (or another convention): the cache is not used.
    with pytest.raises(AssertionError, match="Inception ran"):
        compute_reference_stats(train_images[:31], ref_path, device="cpu")
    with pytest.raises(AssertionError, match="Inception ran"):
        compute_reference_stats(train_images, ref_path, device="cpu", resize="antialias")


def test_subset_of_reference(train_images, train_features) -> None:
    stats = compute_reference_stats(train_images, None, max_images=8, seed=0, device="cpu")
    idx = subset_indices(32, 8, seed=0)
    assert stats.n == 8 and stats.content_hash == content_hash(train_images[idx])
    np.testing.assert_allclose(stats.features, train_features[idx], atol=1e-4)


def test_load_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="ref-stats"):
        load_reference_stats(tmp_path / "none.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.npz: cannot read"):
        load_reference_stats(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", mu=np.zeros(2048))
    with pytest.raises(ValueError, match="other.npz: not a pokediff reference-stats file"):
        load_reference_stats(tmp_path / "other.npz")


def test_unknown_extractor_is_refused(ref_path, tmp_path) -> None:
    with np.load(ref_path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["extractor"] = np.str_("inception-2015-12-05/pool3/bicubic")
    np.savez(tmp_path / "odd.npz", **arrays)
    with pytest.raises(ValueError, match="odd.npz: extractor 'inception-2015-12-05/pool3/bicubic'"):
        load_reference_stats(tmp_path / "odd.npz")


def test_reference_needs_two_images(train_images) -> None:
    with pytest.raises(ValueError, match="at least 2"):
        compute_reference_stats(train_images[:1], None, device="cpu")


# ----------------------------------------------------------------------------------------------
# The evaluator used by training
# ----------------------------------------------------------------------------------------------
def test_evaluator_scores_images(ref_path, other_images, other_features, fid_train_other) -> None:
    evaluator = FIDEvaluator(ref_path, device="cpu", batch_size=16, kid_subsets=10, kid_subset_size=16,
                             memorisation=True)
    metrics = evaluator.score_features(other_features)
    assert metrics["fid"] == pytest.approx(fid_train_other, rel=1e-6)  # fid is symmetric
    assert metrics["num_samples"] == 32 and metrics["num_reference"] == 32 and metrics["kid_subset_size"] == 16
    assert metrics["kid_mean"] > 0 and metrics["kid_std"] >= 0
    assert metrics["memorisation_share_below_train_nn"] == 0.0
    # score() runs Inception itself (a few images keep this short).
    small = evaluator.score(other_images[:4])
    assert small["num_samples"] == 4 and small["kid_subset_size"] == 4 and small["fid"] > 0
    with pytest.raises(TypeError, match="uint8"):
        evaluator.score(other_images[:4].float())
    with pytest.raises(ValueError, match="at least 2"):
        evaluator.score_features(other_features[:1])
