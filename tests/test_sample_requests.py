"""Served sampling requests are validated and bounded before any work (pokediff.sample_requests)."""

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from pokediff.pixels import save_png
from pokediff.sample_requests import RequestError, parse_requests, png_base64


def test_requests_parse_with_optional_eta_and_dataframe_numbers():
    rows = [{"num_images": 2, "sampler": "ddim", "steps": 3, "seed": 1, "eta": float("nan")},  # missing eta
            {"num_images": 1.0, "sampler": "dpmpp2m", "steps": np.int64(5), "seed": 0}]
    a, b = parse_requests(rows, timesteps=10)
    assert (a.num_images, a.sampler, a.steps, a.seed, a.eta) == (2, "ddim", 3, 1, 0.0)
    assert (b.num_images, b.sampler, b.steps) == (1, "dpmpp2m", 5)


@pytest.mark.parametrize("row, message", [
    ({"num_images": 0}, "num_images must be an integer from 1 to 64"),
    ({"num_images": True}, "num_images must be an integer"),
    ({"sampler": "euler"}, "sampler must be one of ddpm, ddim, dpmpp2m"),
    ({"steps": 11}, "steps must be an integer from 1 to 10"),
    ({"steps": 2.5}, "steps must be an integer"),
    ({"seed": -1}, "seed must be an integer"),
    ({"eta": 3.0}, "eta must be a number from 0 to 1"),
    ({"sampler": "ddpm", "eta": 0.5}, "eta is used only by ddim; give 0 for ddpm"),
    ({"sampler": "x" * 10_000}, "got xxxxxxxx"),
])
def test_bad_requests_name_the_field(row, message):
    base = {"num_images": 1, "sampler": "ddim", "steps": 2, "seed": 0}
    with pytest.raises(RequestError, match=message) as info:
        parse_requests([{**base, **row}], timesteps=10)
    assert len(str(info.value)) < 200  # hostile values are cut


def test_calls_are_bounded():
    row = {"num_images": 40, "sampler": "ddim", "steps": 2, "seed": 0}
    with pytest.raises(RequestError, match="at most 64 images per call"):
        parse_requests([row, row], timesteps=10)
    with pytest.raises(RequestError, match="give 1 to 16 request rows"):
        parse_requests([], timesteps=10)


def test_png_base64_round_trips_with_the_sample_files_bytes(tmp_path):
    """Served answers carry the bytes `pokediff sample` writes for the same pixels: one PNG encoder."""
    img = torch.randint(0, 256, (3, 8, 6), dtype=torch.uint8)
    served = base64.b64decode(png_base64(img))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(served))), img.permute(1, 2, 0).numpy())
    assert served == save_png(img, tmp_path / "000000.png").read_bytes()
    grey = img[:1]
    assert base64.b64decode(png_base64(grey)) == save_png(grey, tmp_path / "grey.png").read_bytes()
