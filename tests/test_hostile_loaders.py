"""Every loader holds a small hostile file to what it weighs, not what it declares: the real `pokediff`
command in a fresh interpreter (hostile_files.run_cli_measured), its exit code, its one line, and its
peak RSS (a bare CLI process with torch imported is ~690 MB; the bound is 1 GB).

On 980612b: the 4 MB checkpoint declaring a 4 GB tensor reached 4.6 GB before its config check (or failed
allocating it under a 6 GB cap), the 3.7 MB ref_stats.npz reached 4.1 GB, a model file's config with
num_res_blocks 10000 built U-Net blocks for minutes and over 1.2 GB, and a progressive JPEG of 50,000
scans was decoded and ingested.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import TINY_CLI_OVERRIDES, tiny_model_config
from hostile_files import (
    checkpoint_declaring,
    jpeg_with_scans,
    model_file_with_config,
    run_cli_measured,
    stats_declaring,
)
from pokediff.config import DiffusionConfig

MAX_RSS_MB = 1024
DECLARED_MIB = 4000  # hand_zip packs sizes in 32 bits: 4095 MiB is the most one entry can declare
TINY = ["--params", "none", *TINY_CLI_OVERRIDES]


def _one_line(run: dict, code: int, *fragments: str) -> str:
    lines = [line for line in run["stderr"].splitlines() if line.strip()]
    assert run["code"] == code and len(lines) == 1, run
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert run["peak_rss_mb"] < MAX_RSS_MB, run
    return lines[0]


def _sample(checkpoint: Path, tmp_path: Path) -> dict:
    return run_cli_measured(["sample", *TINY, "--checkpoint", str(checkpoint), "--num-images", "1", "--steps", "2",
                             "--sampler", "ddim", "--out", str(tmp_path / "out" / "grid.png"), "--device", "cpu"])


def _tiny_config() -> dict:
    return {"model": tiny_model_config().model_dump(mode="json"),
            "diffusion": DiffusionConfig().model_dump(mode="json")}


@pytest.mark.parametrize("deflated, fragment", [
    (True, "holds compressed entries"),  # 4 MB of file inflating to 4.2 GB
    (False, "record size (12 bytes) does not match"),  # 1.5 KB, its pickle declaring a 4.2 GB storage
])
def test_a_checkpoint_declaring_a_4_gb_tensor_is_refused_without_allocating_it(tmp_path, deflated, fragment):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(checkpoint_declaring(DECLARED_MIB, _tiny_config(), deflated=deflated))
    assert path.stat().st_size < (5 << 20)
    _one_line(_sample(path, tmp_path), 1, f"{path}: ", fragment)
    assert not [p for p in (tmp_path / "out").rglob("*")], "nothing written, the lock released"


@pytest.mark.parametrize("deflated, fragment", [
    (True, "features is compressed; np.savez stores arrays uncompressed"),  # 3.7 MB -> 3.8 GB
    (False, "not a pokediff reference-stats file"),  # 18 KB whose features header declares 3.8 GB
])
def test_reference_stats_declaring_4_gb_are_refused_without_allocating_them(tmp_path, deflated, fragment):
    ref = tmp_path / "ref_stats.npz"
    ref.write_bytes(stats_declaring(3584, deflated=deflated))
    samples = tmp_path / "samples"
    samples.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(samples / f"{i}.png")
    run = run_cli_measured(["score", *TINY, "--samples", str(samples), "--ref", str(ref), "--out",
                            str(tmp_path / "stats" / "metrics.json"), "--device", "cpu", "--quiet", "--no-track"])
    _one_line(run, 1, f"{ref}: ", fragment)
    assert not (tmp_path / "stats" / "metrics.json").exists()


@pytest.mark.parametrize("key, value, fragment", [
    ("num_res_blocks", 10000, "num_res_blocks: Input should be less than or equal to 16 (got 10000)"),
    ("channel_mults", [1] * 10000, "channel_mults: must be a list of 1 to 8 integers"),
])
def test_a_model_config_beyond_any_pokediff_u_net_is_refused_before_building_it(tmp_path, key, value, fragment):
    def change(config: dict) -> dict:
        config["model"][key] = value
        return config

    path = model_file_with_config(tmp_path / "model.safetensors", change)
    _one_line(_sample(path, tmp_path), 1, f"{path}: its model config: ", fragment)


def test_ingest_quarantines_a_jpeg_of_50000_scans_without_decoding_it(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "025.jpg").write_bytes(jpeg_with_scans(50_000))
    run = run_cli_measured(["ingest", *TINY, "--source", str(source), "--out-dir", str(tmp_path / "ds"),
                            "--workers", "1", "--quiet"])
    _one_line(run, 1, "no usable images: 1 file(s) quarantined", "025.jpg: JPEG with 50,000 scans", "not decoded")
    assert not (tmp_path / "ds" / "manifest.csv").exists()
