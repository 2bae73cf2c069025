"""Score generated images against cached reference statistics: FID, KID and memorisation.

Used by the ``score`` stage and, every N steps, by the training loop::

    evaluator = FIDEvaluator("outputs/ref_stats/ref_stats.npz", device="cuda", batch_size=64)
    metrics = evaluator.score(to_uint8(samples))  # samples: float (N, 3, H, W) in [-1, 1]
    # {"fid": ..., "kid_mean": ..., "kid_std": ..., "num_samples": N, "kid_subset_size": ...}

The Inception network is loaded once per evaluator; the reference features never go through it again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from pokediff.evaluation.frechet import frechet_distance, gaussian_stats, psd_sqrt
from pokediff.evaluation.inception import (
    DEFAULT_BATCH_SIZE,
    ImageSource,
    extract_features,
    get_extractor,
)
from pokediff.evaluation.kid import kernel_inception_distance
from pokediff.evaluation.memorisation import memorisation_metrics, nearest_neighbours
from pokediff.evaluation.reference import ReferenceStats, load_reference_stats


class FIDEvaluator:
    """FID / KID (and optionally memorisation) of uint8 images against one reference set.

    Args:
        reference_stats: path of a stats .npz (``pokediff ref-stats``) or a loaded ReferenceStats.
            Its feature convention (``tf1`` / ``antialias`` resize) is used for the samples too.
        device: "auto", "cpu", "cuda", ...
        batch_size: images per Inception forward pass.
        kid_subsets, kid_subset_size: KID estimator settings; the subset size is clipped to the
            smaller set (and reported as ``kid_subset_size``).
        memorisation: also report the nearest-training-image metrics (see ``memorisation.py``).
        seed: KID subset draws, so two calls on the same images give the same numbers.
    """

    def __init__(
        self,
        reference_stats: str | Path | ReferenceStats,
        device: str | torch.device = "auto",
        batch_size: int = DEFAULT_BATCH_SIZE,
        kid_subsets: int = 100,
        kid_subset_size: int = 100,
        memorisation: bool = False,
        seed: int = 0,
    ) -> None:
        self.ref = (
            reference_stats
            if isinstance(reference_stats, ReferenceStats)
            else load_reference_stats(reference_stats)
        )
        self.extractor = get_extractor(self.ref.resize, device)
        if self.extractor.id != self.ref.extractor:
            raise ValueError(f"reference stats use {self.ref.extractor!r}, extractor is {self.extractor.id!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.kid_subsets = kid_subsets
        self.kid_subset_size = kid_subset_size
        self.memorisation = memorisation
        self.seed = seed
        self._ref_sqrt_sigma: np.ndarray | None = None  # psd_sqrt(ref.sigma), computed on first use

    def features(self, images: ImageSource, progress: bool = False) -> np.ndarray:
        """Inception features (N, 2048) of uint8 images, in the reference's convention."""
        return extract_features(images, self.batch_size, extractor=self.extractor, progress=progress)

    def score(self, images: ImageSource, progress: bool = False) -> dict[str, Any]:
        """Metrics of uint8 images (N, 3, H, W) (or an iterable of them); see :meth:`score_features`."""
        return self.score_features(self.features(images, progress=progress))

    def _ref_sqrt(self) -> np.ndarray:
        if self._ref_sqrt_sigma is None:
            self._ref_sqrt_sigma = psd_sqrt(self.ref.sigma)
        return self._ref_sqrt_sigma

    def score_features(self, features: np.ndarray) -> dict[str, Any]:
        """Metrics of sample features (N, 2048) against the reference: flat dict of numbers."""
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != self.ref.mu.shape[0]:
            raise ValueError(f"features must have shape (N, {self.ref.mu.shape[0]}), got {features.shape}")
        n = features.shape[0]
        if n < 2:
            raise ValueError(f"FID needs at least 2 samples, got {n}")
        mu, sigma = gaussian_stats(features)
        subset = min(self.kid_subset_size, n, self.ref.n)
        kid_mean, kid_std = kernel_inception_distance(
            self.ref.features, features, subsets=self.kid_subsets, subset_size=subset, seed=self.seed
        )
        metrics: dict[str, Any] = {
            "fid": frechet_distance(self.ref.mu, self.ref.sigma, mu, sigma, sqrt_sigma1=self._ref_sqrt()),
            "kid_mean": kid_mean,
            "kid_std": kid_std,
            "kid_subset_size": subset,
            "num_samples": n,
            "num_reference": self.ref.n,
        }
        if self.memorisation:
            nn_dist, _ = nearest_neighbours(features, self.ref.features)
            metrics.update(memorisation_metrics(nn_dist, self.ref.train_nn))
        return metrics
