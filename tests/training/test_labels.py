"""Label dropout and one-type draws: their rates, checked statistically with explicit bounds."""

from __future__ import annotations

import math

import torch

from pokediff.pokemon_types import NUM_TYPES, multi_hot
from pokediff.training.labels import draw_labels

N = 200_000


def _bound(p: float, n: int) -> float:
    """Five standard errors of a binomial share: a false alarm about once in 3.5 million runs."""
    return 5 * math.sqrt(p * (1 - p) / n)


def test_label_dropout_and_one_type_rates() -> None:
    two = torch.tensor(multi_hot(("fire", "flying")), dtype=torch.uint8).repeat(N, 1)  # (N, K)
    one = torch.tensor(multi_hot(("water",)), dtype=torch.uint8).repeat(N, 1)
    p, q = 0.1, 0.5
    g = torch.Generator().manual_seed(0)
    drawn = draw_labels(torch.cat([two, one]), g, p, q)  # (2N, K)
    d2, d1 = drawn[:N], drawn[N:]
    null = d2.sum(1) == 0
    assert abs(float(null.float().mean()) - p) < _bound(p, N)
    assert abs(float((d1.sum(1) == 0).float().mean()) - p) < _bound(p, N)
    fire, flying = multi_hot(("fire",)), multi_hot(("flying",))
    as_fire = (d2 == torch.tensor(fire, dtype=d2.dtype)).all(1)
    as_flying = (d2 == torch.tensor(flying, dtype=d2.dtype)).all(1)
    both = (d2 == two.float()).all(1)
    for share, expected in ((as_fire, (1 - p) * q / 2), (as_flying, (1 - p) * q / 2), (both, (1 - p) * (1 - q))):
        assert abs(float(share.float().mean()) - expected) < _bound(expected, N)
    assert bool((null | as_fire | as_flying | both).all())  # nothing else: never a type the image lacks
    # a one-type image is never changed but by dropout
    kept = d1[d1.sum(1) > 0]
    assert bool((kept == one[0].float()).all())


def test_no_dropout_and_no_one_type_keep_every_label() -> None:
    labels = torch.randint(0, 2, (1000, NUM_TYPES), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    torch.testing.assert_close(draw_labels(labels, torch.Generator().manual_seed(2), 0.0, 0.0), labels.float())
    assert float(draw_labels(labels, torch.Generator().manual_seed(2), 1.0, 0.0).abs().sum()) == 0.0
