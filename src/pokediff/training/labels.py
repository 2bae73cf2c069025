"""The labels a type-conditional model trains on: which types each drawn image is shown with.

    labels = draw_labels(dataset_labels[idx], generator, cond_drop, cond_one_type)   # (B, NUM_TYPES) float

Per image of the batch, from its multi-hot types (1 or 2 ones; all zeros for an unlabelled image):

    a two-type image keeps one of its two types alone (each half the time) with probability cond_one_type,
        so that asking for "fire" alone means any Pokémon with fire among its types, not only the 26
        pure-fire species (for flying, a pure type would be one species of 649: Tornadus);
    then every image is shown with the null label (all zeros) with probability cond_drop: the
        unconditional model that classifier-free guidance needs, learnt by the same network
        (Ho & Salimans 2022, Algorithm 1).

With p = cond_drop and q = cond_one_type a two-type image {a, b} is seen as {a, b} with probability
(1 - p)(1 - q), as {a} and as {b} with (1 - p) q / 2 each, as the null label with p. All draws come from
the training generator (the same on every rank), after the draws of the unconditional batch, so an
unconditional run's batches are unchanged.
"""

from __future__ import annotations

import torch


def draw_labels(labels: torch.Tensor, generator: torch.Generator, cond_drop: float,
                cond_one_type: float) -> torch.Tensor:
    """labels: the drawn images' multi-hot types (B, K) -> the labels they are trained with, float (B, K)."""
    B, K = labels.shape
    device = labels.device
    chosen = labels.float()
    one = torch.rand(B, generator=generator, device=device) < cond_one_type  # (B,)
    pick_scores = torch.rand(B, K, generator=generator, device=device) * chosen  # a uniform pick among the present
    drop = torch.rand(B, generator=generator, device=device) < cond_drop  # (B,)
    picked = torch.nn.functional.one_hot(pick_scores.argmax(dim=1), K).float()  # (B, K)
    chosen = torch.where((one & (chosen.sum(dim=1) == 2))[:, None], picked, chosen)
    return torch.where(drop[:, None], torch.zeros_like(chosen), chosen)
