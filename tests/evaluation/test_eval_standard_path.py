"""Proof that our offline extractor computes the standard FID: torchmetrics' own ``feature=2048``
path, made offline by writing torch-fidelity's weights file from the TorchScript weights, gives the
same features, the same FID and the same KID on the same images.

Two resize conventions are checked, each against the torchmetrics setting that uses it:
our ``"tf1"`` vs ``FrechetInceptionDistance(feature=2048, antialias=False)`` (the original TF FID),
our ``"antialias"`` vs plain ``FrechetInceptionDistance(feature=2048)`` (torchmetrics' default).

Measured once on real data (256 normal vs 256 shiny Pokémon sprites of the ingested dataset):
tf1 52.8187 (ours) vs 52.8186 (torchmetrics, antialias=False); antialias 52.7649 vs 52.7648; relative
difference 1.7e-6 both, features within 2e-6. The two conventions are 0.10 % apart there.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from evaluation.standard_path import (  # tests/evaluation/standard_path.py
    convert_torchscript_state_dict,
    ensure_standard_weights,
    standard_fid_metric,
    standard_kid_metric,
    torch_fidelity_weights_filename,
)

from pokediff.evaluation.frechet import fid_from_features
from pokediff.evaluation.inception import extract_features, get_extractor
from pokediff.evaluation.kid import kernel_inception_distance

N_STD = 16  # images per set through torchmetrics' own extractor (Inception on CPU is the cost)


@contextlib.contextmanager
def _torch_threads(n: int):
    """torchmetrics' FID ends in torch.linalg.eigvals of a 2048 x 2048 matrix; on the shared 2-core
    machines that took 128 s with 2 threads and 4 s with 1 (threads spin-waiting), like numpy's eigh."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Capture:
    """Forward hook: keeps what torchmetrics' own Inception returned inside ``update``."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.outputs: list[torch.Tensor] = []
        module.register_forward_hook(lambda _m, _i, out: self.outputs.append(out.detach().clone()))


@pytest.fixture(scope="module")
def no_downloads():
    """Any attempt of torch.hub to download fails the test."""

    def refuse(url, *args, **kwargs):
        raise AssertionError(f"download attempted: {url}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.hub, "download_url_to_file", refuse)
        yield


@pytest.fixture(scope="module")
def weights(standard_cache, no_downloads):
    """First construction: our code writes the weights file into an empty project cache."""
    target = standard_cache / "torch" / "hub" / "checkpoints" / torch_fidelity_weights_filename()
    assert not target.exists()
    path = ensure_standard_weights(standard_cache)
    assert path == target and path.stat().st_size > 90e6
    return path


@pytest.fixture(scope="module")
def tf1_run(weights, standard_cache, train_images, other_images):
    """torchmetrics' standard FID (TF1 resize) on train vs other, features captured on the way."""
    metric = standard_fid_metric(standard_cache, antialias=False)
    capture = _Capture(metric.inception)
    metric.update(train_images[:N_STD], real=True)
    metric.update(other_images[:N_STD], real=False)
    with _torch_threads(1):
        fid = metric.compute().item()
    real, fake = (t.numpy() for t in capture.outputs)
    return fid, real, fake


@pytest.fixture(scope="module")
def ours_tf1(train_features, other_features) -> float:
    return fid_from_features(train_features[:N_STD], other_features[:N_STD])


def test_weights_filename_is_the_one_torch_hub_looks_for() -> None:
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    assert URL_INCEPTION_V3.endswith("/" + torch_fidelity_weights_filename())


def test_conversion_maps_every_tensor() -> None:
    from pokediff.evaluation.inception import load_torchscript_inception

    ts = load_torchscript_inception("cpu").state_dict()
    sd = convert_torchscript_state_dict(ts)
    n_convs = sum(k.endswith(".weight") for k in ts)
    assert n_convs == 94  # Inception-v3 has 94 conv + batch-norm units up to pool3
    assert len(sd) == 6 * n_convs + 2  # conv.weight + 5 bn tensors each, + fc
    assert torch.isnan(sd["fc.weight"]).all()  # not in the export: poisoned, unused by pool3
    with pytest.raises(ValueError, match="not mapped"):
        convert_torchscript_state_dict({**ts, "net.layers.extra.weight": torch.zeros(1)})


def test_standard_path_constructs_offline_and_restores_torch_home(weights, standard_cache, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", "/nonexistent/torch-home")
    metric = standard_fid_metric(standard_cache, antialias=False)
    assert metric.inception.__class__.__name__ == "NoTrainInceptionV3"
    assert torch.hub.get_dir() == "/nonexistent/torch-home/hub"


def test_standard_features_equal_ours(tf1_run, train_features, other_features) -> None:
    _, real, fake = tf1_run
    np.testing.assert_allclose(real, train_features[:N_STD], rtol=0, atol=1e-5)
    np.testing.assert_allclose(fake, other_features[:N_STD], rtol=0, atol=1e-5)


def test_standard_torchmetrics_fid_equals_ours(tf1_run, ours_tf1) -> None:
    tm_fid, _, _ = tf1_run
    assert tm_fid > 10  # the sets differ: a meaningful, non-zero FID
    assert abs(ours_tf1 - tm_fid) / tm_fid < 1e-4  # measured: ~1e-7


def test_our_extractor_plugs_into_torchmetrics(train_images, other_images, train_features, other_features):
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    extractor = get_extractor("tf1", "cpu")
    fid = FrechetInceptionDistance(feature=extractor)
    fid.update(train_images[:4], real=True)
    # FID's state is the running feature sum (computing FID itself is covered above).
    np.testing.assert_allclose(fid.real_features_sum.numpy(), train_features[:4].sum(0), rtol=1e-5, atol=1e-4)
    kid = KernelInceptionDistance(feature=extractor, subsets=2, subset_size=4)
    kid.update(train_images[:4], real=True)
    kid.update(other_images[:4], real=False)
    ours = kernel_inception_distance(train_features[:4], other_features[:4], subsets=1, subset_size=4)[0]
    assert kid.compute()[0].item() == pytest.approx(ours, rel=1e-4)


def test_antialias_convention_equals_torchmetrics_default(weights, standard_cache, train_images, other_images,
                                                          train_features) -> None:
    # torchmetrics' default extractor (antialias=True), here through its standard KID.
    real_imgs, fake_imgs = train_images[:N_STD], other_images[:N_STD]
    kid = standard_kid_metric(standard_cache, subsets=3, subset_size=N_STD)
    capture = _Capture(kid.inception)
    kid.update(real_imgs, real=True)
    kid.update(fake_imgs, real=False)
    tm_kid = kid.compute()[0].item()
    ours_ext = get_extractor("antialias", "cpu")
    real = extract_features(real_imgs, extractor=ours_ext)
    fake = extract_features(fake_imgs, extractor=ours_ext)
    np.testing.assert_allclose(capture.outputs[0].numpy(), real, rtol=0, atol=1e-5)
    np.testing.assert_allclose(capture.outputs[1].numpy(), fake, rtol=0, atol=1e-5)
    assert kernel_inception_distance(real, fake, subsets=1, subset_size=N_STD)[0] == pytest.approx(tm_kid, rel=1e-4)
    # ... and the two conventions really differ, so the tf1 test is not vacuous.
    assert np.abs(real - train_features[:N_STD]).max() > 1e-2


def test_fid_of_a_set_with_itself_is_zero(train_features, ours_tf1) -> None:
    assert abs(fid_from_features(train_features, train_features)) < 1e-9 * ours_tf1
