"""Shared fixtures for the evaluation tests: real images drawn with PIL, features computed once.

Two procedurally drawn distributions stand in for real data (the Pokémon dataset is built by its own
stage): ``creatures`` (sprite-like: a coloured body with outline, eyes and limbs on white) and
``abstract`` (full-frame gradients, rectangles and noise). A third set, ``fresh``, is new draws from
the creature distribution. Inception runs at ~0.1-0.25 s per image on the 2-core CPU, so the sets are
small and every feature array is computed once per session.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

SIZE = 64
N_TRAIN = 32
N_OTHER = 32
N_FRESH = 16


def _colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(lo, hi, size=3))  # type: ignore[return-value]


def draw_creature(rng: np.random.Generator, size: int = SIZE) -> Image.Image:
    """A sprite-like creature: body ellipse, limbs, eyes, dark outline, white background."""
    img = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(img)
    body = _colour(rng, 30, 230)
    outline = tuple(max(0, c - 90) for c in body)
    cx, cy = rng.integers(size * 3 // 8, size * 5 // 8, size=2)
    rx, ry = rng.integers(size // 6, size // 3, size=2)
    for _ in range(int(rng.integers(2, 5))):  # limbs / ears
        ang = rng.uniform(0, 2 * np.pi)
        lx, ly = cx + np.cos(ang) * rx, cy + np.sin(ang) * ry
        lr = int(rng.integers(3, size // 8))
        d.ellipse([lx - lr, ly - lr, lx + lr, ly + lr], fill=body, outline=outline, width=2)
    d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=body, outline=outline, width=2)
    belly = tuple(min(255, c + 60) for c in body)
    d.ellipse([cx - rx // 2, cy, cx + rx // 2, cy + ry * 3 // 4], fill=belly)
    for sx in (-1, 1):  # eyes
        ex, ey, er = cx + sx * rx // 3, cy - ry // 3, max(2, rx // 5)
        d.ellipse([ex - er, ey - er, ex + er, ey + er], fill=(255, 255, 255), outline=(0, 0, 0))
        d.ellipse([ex - er // 2, ey - er // 2, ex + er // 2, ey + er // 2], fill=(0, 0, 0))
    return img


def draw_abstract(rng: np.random.Generator, size: int = SIZE) -> Image.Image:
    """Full-frame colour gradient with random rectangles and pixel noise."""
    t = np.linspace(0.0, 1.0, size)
    c0, c1 = rng.uniform(0, 255, size=(2, 3))
    horizontal = rng.random() < 0.5
    ramp = t[None, :, None] if horizontal else t[:, None, None]
    arr = c0 + (c1 - c0) * np.broadcast_to(ramp, (size, size, 1))
    arr = arr + rng.normal(0, 18, size=(size, size, 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = rng.integers(0, size - 8, size=2)
        w, h = rng.integers(6, size // 2, size=2)
        d.rectangle([x0, y0, x0 + w, y0 + h], fill=_colour(rng))
    return img


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL RGB images -> uint8 (N, 3, H, W)."""
    return torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images])).permute(0, 3, 1, 2).contiguous()


def make_set(kind: str, n: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    draw = {"creatures": draw_creature, "abstract": draw_abstract}[kind]
    return to_tensor([draw(rng) for _ in range(n)])


@pytest.fixture(scope="session", autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def train_images() -> torch.Tensor:
    """uint8 (32, 3, 64, 64): the 'training set' (creatures, seed 1)."""
    return make_set("creatures", N_TRAIN, seed=1)


@pytest.fixture(scope="session")
def other_images() -> torch.Tensor:
    """uint8 (32, 3, 64, 64): a different distribution (abstract, seed 2)."""
    return make_set("abstract", N_OTHER, seed=2)


@pytest.fixture(scope="session")
def fresh_images() -> torch.Tensor:
    """uint8 (16, 3, 64, 64): new draws from the training distribution (creatures, seed 3)."""
    return make_set("creatures", N_FRESH, seed=3)


@pytest.fixture(scope="session")
def extractor():
    from pokediff.evaluation.inception import get_extractor

    return get_extractor("tf1", "cpu")


@pytest.fixture(scope="session")
def train_features(extractor, train_images) -> np.ndarray:
    from pokediff.evaluation.inception import extract_features

    return extract_features(train_images, batch_size=16, extractor=extractor)


@pytest.fixture(scope="session")
def other_features(extractor, other_images) -> np.ndarray:
    from pokediff.evaluation.inception import extract_features

    return extract_features(other_images, batch_size=16, extractor=extractor)


@pytest.fixture(scope="session")
def fresh_features(extractor, fresh_images) -> np.ndarray:
    from pokediff.evaluation.inception import extract_features

    return extract_features(fresh_images, batch_size=16, extractor=extractor)


@pytest.fixture(scope="session")
def standard_cache(tmp_path_factory) -> Path:
    """A fresh project cache in which our code writes torch-fidelity's weights file (first time)."""
    return tmp_path_factory.mktemp("pokediff-cache")


@pytest.fixture(scope="session")
def fid_train_other(train_features, other_features) -> float:
    """Our FID between the training set and the abstract set (two 2048x2048 eigh: computed once)."""
    from pokediff.evaluation.frechet import fid_from_features

    return fid_from_features(train_features, other_features)
