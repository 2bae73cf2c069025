"""One loader (pokediff.data.image_folder) and one decoder (pokediff.data.decode) behind training,
scoring and ingest, one pixel module (pokediff.pixels) behind the sample PNGs and the run fingerprint:
the same file gives the same pixels everywhere."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from pokediff.checkpoint import run_fingerprint
from pokediff.config import DiffusionConfig, ModelConfig, TrainConfig
from pokediff.data import sources as sources_module
from pokediff.data.image_folder import list_images, load_image_folder, load_training_images
from pokediff.data.sprites import ANIMATED_DIR, DREAMWORLD_DIR
from pokediff.pixels import content_hash, encode_png, from_uint8, pixel_sha256, save_png, to_uint8


def _square_rgba(size: int, colour: tuple[int, int, int]) -> Image.Image:
    """An opaque `colour` disc on a fully transparent (black) square."""
    pixels = np.zeros((size, size, 4), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    pixels[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2] = (*colour, 255)
    return Image.fromarray(pixels, "RGBA")


def test_scoring_reads_what_training_reads(tmp_path, sprite_member) -> None:
    """The scoring loader lists and decodes with training's code: gif/svg/webp too, hidden files and
    __MACOSX skipped; a 64x64 file gives training's pixels at resolution 64, any other keeps its size."""
    (tmp_path / "gifs").mkdir()
    (tmp_path / "gifs" / "25.gif").write_bytes(sprite_member(ANIMATED_DIR + "25.gif"))  # animated, not square
    (tmp_path / "1.svg").write_bytes(sprite_member(DREAMWORLD_DIR + "1.svg"))
    _square_rgba(64, (200, 30, 30)).save(tmp_path / "disc.webp", lossless=True)
    _square_rgba(64, (30, 30, 200)).save(tmp_path / "disc.png")
    for hidden in (".cache/x.png", "__MACOSX/disc.png", ".disc.png"):
        (tmp_path / hidden).parent.mkdir(exist_ok=True)
        _square_rgba(64, (0, 200, 0)).save(tmp_path / hidden)

    images, paths = load_image_folder(tmp_path, resolution=None, on_error="raise")
    assert paths == ["1.svg", "disc.png", "disc.webp", "gifs/25.gif"]
    training = load_training_images(tmp_path, resolution=64)
    assert training.shape == (4, 3, 64, 64)
    for index in (1, 2):  # the 64x64 files: no padding, no resize, identical pixels
        assert torch.equal(images[index], training[index])
        assert images[index][:, 0, 0].tolist() == [255, 255, 255]  # transparent corner -> white
    assert images[0].shape == (3, 124, 128)  # the 226x218 SVG rendered to fit 2 x 64 (SVG_OVERSAMPLE)
    with Image.open(tmp_path / "gifs" / "25.gif") as gif:
        assert images[3].shape == (3, gif.height, gif.width)  # own size: Inception resizes it


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_a_transparent_colour_key_is_composited_in_scoring_as_in_training(tmp_path, mode) -> None:
    """An RGB or greyscale PNG whose tRNS chunk marks one colour transparent: that colour becomes the
    background in scoring as it always did in training (scoring used to keep the key colour)."""
    key = (0, 0, 0) if mode == "RGB" else 0
    image = Image.new(mode, (8, 8), key)
    image.paste((90, 90, 90) if mode == "RGB" else 90, (2, 2, 6, 6))
    image.save(tmp_path / "keyed.png", transparency=key)
    with Image.open(tmp_path / "keyed.png") as check:
        assert check.mode == mode and "transparency" in check.info
    (scored,), _ = load_image_folder(tmp_path, resolution=None, on_error="raise")
    assert scored[:, 0, 0].tolist() == [255, 255, 255] and scored[:, 3, 3].tolist() == [90, 90, 90]
    assert torch.equal(scored, load_training_images(tmp_path, resolution=8)[0])


def test_scoring_refuses_oversized_images_in_one_line(tmp_path, bomb_png) -> None:
    """Scoring has training's limits: a 20000^2 header is refused before decoding (Pillow's own
    DecompressionBombError used to escape as a traceback)."""
    (tmp_path / "bomb.png").write_bytes(bomb_png(20_000, 20_000))
    with pytest.raises(ValueError, match=r"bomb.png: cannot read image \(declared size exceeds the limit"):
        load_image_folder(tmp_path, resolution=None, on_error="raise")


def test_files_over_the_byte_cap_are_not_read(tmp_path, monkeypatch) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "big.png")  # ~12 KB of incompressible pixels
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "small.png")
    monkeypatch.setattr(sources_module, "MAX_FILE_BYTES", 4096)
    with pytest.raises(ValueError, match=r"big.png: cannot read image \(.*more than 4,096 bytes"):
        load_image_folder(tmp_path, resolution=None, on_error="raise")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable[\s\S]*big.png"):
        assert load_training_images(tmp_path).shape == (1, 3, 64, 64)


def test_dataset_files_behind_links_into_the_dvc_cache_are_read(tmp_path) -> None:
    """A dataset checked out by DVC with cache.type symlink holds links into the project's DVC cache:
    training and scoring follow those (and only those: see tests/data/test_dataset_reads_stay_inside.py)."""
    cache = tmp_path / ".dvc" / "cache" / "files" / "md5" / "ab"
    cache.mkdir(parents=True)
    _square_rgba(16, (10, 20, 30)).save(cache / "cdef", format="PNG")
    (tmp_path / "ds" / "images").mkdir(parents=True)
    (tmp_path / "ds" / "images" / "000000.png").symlink_to(cache / "cdef")
    _square_rgba(16, (40, 50, 60)).save(tmp_path / "ds" / "images" / "000001.png")
    (tmp_path / "ds" / "manifest.csv").write_text("path\nimages/000001.png\nimages/000000.png\n")
    assert [p.name for p in list_images(tmp_path / "ds")[0]] == ["000001.png", "000000.png"]
    training = load_training_images(tmp_path / "ds")
    scored, _ = load_image_folder(tmp_path / "ds", resolution=None, on_error="raise")
    assert torch.equal(torch.stack(scored), training)
    assert training[1, :, 8, 8].tolist() == [10, 20, 30]


def test_uint8_and_model_floats_convert_both_ways_exactly() -> None:
    values = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    floats = from_uint8(values)
    assert floats.dtype == torch.float32 and floats.min() == -1.0 and floats.max() == 1.0
    assert torch.equal(to_uint8(floats), values)
    assert to_uint8(torch.tensor([-3.0, 0.0, 3.0])).tolist() == [0, 128, 255]  # clamped, rounded


def test_sample_pngs_are_encoded_like_ingest_output(tmp_path) -> None:
    image = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (3, 20, 20), dtype=np.uint8))
    written = save_png(image, tmp_path / "s" / "000000.png").read_bytes()
    assert written == encode_png(Image.fromarray(image.permute(1, 2, 0).numpy()))


def test_one_pixel_hash_keeps_the_stored_values() -> None:
    """The manifest's sha256 column, the reference stats' content_hash and the run fingerprint are
    stored in existing datasets, stats files and checkpoints: their values must not change."""
    pixels = np.arange(18, dtype=np.uint8).reshape(2, 3, 3)
    assert pixel_sha256(pixels) == hashlib.sha256(b"(2, 3, 3)" + pixels.tobytes()).hexdigest()
    assert pixel_sha256(pixels) == "357827e7a0fd8faa78efcb9790f4539e6c7b0703230daf4699de1279e07c02e7"
    batch = torch.arange(24, dtype=torch.uint8).reshape(2, 3, 2, 2)
    assert content_hash(batch) == "bacd51cfd44de5a72ab5cb3a9611c547638c0c4dc15adbf75a40ac15cfb73c9f"
    assert content_hash(batch) == content_hash([b.numpy() for b in batch])  # tensors and arrays alike
    assert pixel_sha256(batch.permute(0, 2, 3, 1)) == pixel_sha256(batch.permute(0, 2, 3, 1).contiguous())
    with pytest.raises(TypeError, match="uint8"):
        pixel_sha256(pixels.astype(np.int16))

    configs = (ModelConfig(), DiffusionConfig(), TrainConfig())
    fingerprint = run_fingerprint(batch, *configs)
    assert fingerprint == run_fingerprint(batch.clone(), *configs)
    assert fingerprint != run_fingerprint(batch.reshape(3, 2, 2, 2), *configs)  # same bytes, other shape
    changed = batch.clone()
    changed[1, 2, 1, 1] ^= 1
    assert fingerprint != run_fingerprint(changed, *configs)
