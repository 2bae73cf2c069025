"""Memorisation: nearest-neighbour distances, and copies of training images are flagged."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from pokediff.evaluation.inception import extract_features
from pokediff.evaluation.memorisation import memorisation_metrics, nearest_neighbours, train_nn_distances


def test_nearest_neighbours_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    q, r = rng.normal(size=(37, 8)), rng.normal(size=(50, 8))
    dist, idx = nearest_neighbours(q, r, chunk=16)  # several chunks
    full = cdist(q, r)
    np.testing.assert_array_equal(idx, full.argmin(1))
    np.testing.assert_allclose(dist, full.min(1), rtol=1e-9)


def test_exclude_self_skips_only_the_own_row() -> None:
    rng = np.random.default_rng(1)
    r = rng.normal(size=(20, 6))
    r[7] = r[3]  # an exact duplicate elsewhere in the set still counts
    dist = train_nn_distances(r)
    full = cdist(r, r)
    np.fill_diagonal(full, np.inf)
    np.testing.assert_allclose(dist, full.min(1), rtol=1e-9, atol=1e-7)
    assert dist[3] == pytest.approx(0.0, abs=1e-6) and dist[7] == pytest.approx(0.0, abs=1e-6)


def test_metrics_known_answer() -> None:
    m = memorisation_metrics(np.array([0.0, 1.0, 5.0, 10.0]), np.array([2.0, 4.0, 6.0]))
    assert m == {
        "memorisation_nn_median": 3.0,
        "memorisation_share_below_train_nn": 0.5,  # 0 and 1 are below the median 4
        "memorisation_train_nn_median": 4.0,
    }


def test_errors() -> None:
    with pytest.raises(ValueError, match="same D"):
        nearest_neighbours(np.zeros((3, 2)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="itself"):
        nearest_neighbours(np.zeros((3, 2)), np.zeros((4, 2)), exclude_self=True)
    with pytest.raises(ValueError, match="at least one"):
        memorisation_metrics(np.array([]), np.array([1.0]))


@pytest.fixture(scope="module")
def train_nn(train_features) -> np.ndarray:
    return train_nn_distances(train_features)


def test_copies_of_training_images_are_flagged(extractor, train_images, train_features, train_nn) -> None:
    # Copies go through Inception again (another batch size), as generated PNGs would.
    copies = extract_features(train_images[[3, 17, 0, 25, 9, 30]].clone(), batch_size=4, extractor=extractor)
    dist, idx = nearest_neighbours(copies, train_features)
    np.testing.assert_array_equal(idx, [3, 17, 0, 25, 9, 30])
    m = memorisation_metrics(dist, train_nn)
    assert m["memorisation_share_below_train_nn"] == 1.0
    assert m["memorisation_nn_median"] < 1e-3 * m["memorisation_train_nn_median"]


def test_fresh_images_are_not_flagged(fresh_features, other_features, train_features, train_nn) -> None:
    # New draws from the training distribution: about half below the median (binomial, n=16).
    fresh = memorisation_metrics(nearest_neighbours(fresh_features, train_features)[0], train_nn)
    assert 0.15 <= fresh["memorisation_share_below_train_nn"] <= 0.85
    # Another distribution: far from every training image.
    other = memorisation_metrics(nearest_neighbours(other_features, train_features)[0], train_nn)
    assert other["memorisation_share_below_train_nn"] <= 0.1
    assert other["memorisation_nn_median"] > fresh["memorisation_nn_median"]


def test_nearest_csv_cells_never_run_as_spreadsheet_formulas(tmp_path):
    # On main a sample or reference path starting with "=" was written as is: a spreadsheet runs it.
    import csv

    from pokediff.csv_cells import restore
    from pokediff.evaluation.report import write_nearest_csv

    samples, refs = ["=cmd|' /C calc'!A0.png", "ok.png"], ["@SUM(1).png", "-2.png"]
    path = write_nearest_csv(tmp_path / "nearest.csv", samples, [0.5, 0.25], refs, threshold=0.3)
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    cells = [c for row in rows[1:] for c in row[:2]]
    assert not [c for c in cells if c.startswith(("=", "+", "-", "@"))]
    assert [restore(c) for c in rows[1][:2]] == ["ok.png", "-2.png"]  # closest first, exact after restore
    assert [restore(c) for c in rows[2][:2]] == samples[:1] + refs[:1]
