"""Memorisation check: does a generated sample sit closer to a training image than training images
sit to each other?

For every generated sample we take the L2 distance, in Inception pool3 feature space, to its nearest
training image. The yardstick is the training set's own spacing: for each training image the
distance to its nearest *other* training image, summarised by the median. A generator that samples
the data distribution without copying gives nearest-neighbour distances like a fresh draw from it,
so about half of its samples fall below that median (slightly more, as a sample sees all N training
images where a training image sees N - 1). A generator that copies training images puts almost all of
its samples below it (a copy is at distance ~0). So ``share_below_train_nn`` near 1 flags
memorisation; near 0 means samples are far from everything (poor quality or a different domain).
"""

from __future__ import annotations

import numpy as np


def nearest_neighbours(
    queries: np.ndarray, reference: np.ndarray, exclude_self: bool = False, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """For queries (Q, D) and reference (R, D): distance (Q,) and index (Q,) of the nearest reference.

    Euclidean distance in float64 via ||q||^2 + ||r||^2 - 2 q.r, in chunks of ``chunk`` queries to
    bound memory at chunk x R. ``exclude_self=True`` requires queries to be the reference itself
    and skips each row's own index (so an exact duplicate elsewhere in the set still counts as 0).
    """
    q = np.asarray(queries, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if q.ndim != 2 or r.ndim != 2 or q.shape[1] != r.shape[1]:
        raise ValueError(f"queries and reference must be (N, D) with the same D, got {q.shape} and {r.shape}")
    if exclude_self and q.shape[0] != r.shape[0]:
        raise ValueError("exclude_self=True needs queries to be the reference set itself")
    if r.shape[0] < (2 if exclude_self else 1):
        raise ValueError(f"reference set too small for nearest neighbours: {r.shape[0]} vectors")
    r_sq = (r * r).sum(axis=1)
    dist = np.empty(q.shape[0])
    index = np.empty(q.shape[0], dtype=np.int64)
    for start in range(0, q.shape[0], chunk):
        block = q[start : start + chunk]
        d2 = (block * block).sum(axis=1)[:, None] + r_sq[None, :] - 2.0 * (block @ r.T)  # (B, R)
        if exclude_self:
            rows = np.arange(block.shape[0])
            d2[rows, start + rows] = np.inf
        best = d2.argmin(axis=1)
        index[start : start + chunk] = best
        dist[start : start + chunk] = np.sqrt(np.clip(d2[np.arange(block.shape[0]), best], 0.0, None))
    return dist, index


def train_nn_distances(train_features: np.ndarray) -> np.ndarray:
    """Distance (N,) from each training feature to its nearest other training feature."""
    return nearest_neighbours(train_features, train_features, exclude_self=True)[0]


def memorisation_metrics(sample_nn: np.ndarray, train_nn: np.ndarray) -> dict[str, float]:
    """Summaries of sample-to-train NN distances (S,) against train-to-train NN distances (N,).

    Returns ``memorisation_nn_median`` (median sample-to-train distance),
    ``memorisation_share_below_train_nn`` (share of samples strictly closer than the median
    train-to-train distance) and ``memorisation_train_nn_median`` (that median).
    """
    sample_nn = np.asarray(sample_nn, dtype=np.float64)
    train_nn = np.asarray(train_nn, dtype=np.float64)
    if sample_nn.size == 0 or train_nn.size == 0:
        raise ValueError("memorisation metrics need at least one sample and one training distance")
    threshold = float(np.median(train_nn))
    return {
        "memorisation_nn_median": float(np.median(sample_nn)),
        "memorisation_share_below_train_nn": float(np.mean(sample_nn < threshold)),
        "memorisation_train_nn_median": threshold,
    }
