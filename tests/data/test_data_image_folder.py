"""The one folder loader: its resize and error policies, and load_training_images (ingested dataset or any
folder) built on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pokediff.data.image_folder import NoImagesError, load_image_folder, load_training_images
from pokediff.data.manifest import read_manifest
from pokediff.data.raster import BadImageError
from pokediff.data.sprites import ANIMATED_DIR


def test_ingested_dataset_loads_in_manifest_order(sprites_dataset) -> None:
    images = load_training_images(sprites_dataset)
    manifest = read_manifest(sprites_dataset / "manifest.csv")
    assert images.dtype == torch.uint8 and images.shape == (len(manifest), 3, 64, 64)
    for index in (0, 1, len(manifest) // 2, len(manifest) - 1):
        with Image.open(sprites_dataset / manifest["path"][index]) as image:
            expected = torch.from_numpy(np.array(image)).permute(2, 0, 1)
        assert torch.equal(images[index], expected)


def test_ingested_dataset_can_be_resized(sprites_dataset) -> None:
    assert load_training_images(sprites_dataset, resolution=32).shape[1:] == (3, 32, 32)


def test_plain_folder_of_mixed_images(tmp_path, sprite_member) -> None:
    folder = tmp_path / "mine"
    (folder / "a" / "b").mkdir(parents=True)
    (folder / "a" / "b" / "25.gif").write_bytes(sprite_member(ANIMATED_DIR + "25.gif"))  # animated: 1st frame
    rgba = np.zeros((20, 10, 4), dtype=np.uint8)
    rgba[5:15, 2:8] = (200, 30, 30, 255)  # opaque red block, transparent around it
    Image.fromarray(rgba).save(folder / "a" / "red.png")
    Image.fromarray(np.full((30, 30, 3), 40, dtype=np.uint8)).save(folder / "grey.jpg", quality=95)
    Image.fromarray(np.full((8, 8), 90, dtype=np.uint8), "L").save(folder / "gray_mode.webp", lossless=True)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    (folder / "notes.txt").write_text("not an image, not even looked at")

    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image file\(s\)[\s\S]*broken\.png"):
        images = load_training_images(folder, resolution=32)
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.uint8
    # sorted path order: a/b/25.gif, a/red.png, gray_mode.webp, grey.jpg
    red = images[1].permute(1, 2, 0).numpy()
    assert tuple(red[0, 0]) == (255, 255, 255)  # transparent -> white, padded to a square
    assert tuple(red[16, 16]) == (200, 30, 30)
    assert (images[2] == 90).all()
    assert abs(int(images[3].float().mean()) - 40) <= 2


def test_plain_folder_default_resolution_is_64(tmp_path) -> None:
    Image.new("RGB", (100, 50), (0, 0, 255)).save(tmp_path / "x.png")
    assert load_training_images(tmp_path).shape == (1, 3, 64, 64)


def test_nothing_usable_raises_naming_the_path(tmp_path) -> None:
    with pytest.raises(NoImagesError, match=str(tmp_path)):
        load_training_images(tmp_path)
    (tmp_path / "bad.gif").write_bytes(b"GIF89a")
    with pytest.raises(NoImagesError, match=r"all 1 image file\(s\) were unreadable"), pytest.warns(UserWarning):
        load_training_images(tmp_path)
    with pytest.raises(NoImagesError, match="is not a directory"):
        load_training_images(tmp_path / "missing")


def _disc(size: int, colour: tuple[int, int, int], width: int | None = None) -> Image.Image:
    """An opaque `colour` ellipse on a transparent size x width (default square) canvas."""
    width = width or size
    pixels = np.zeros((size, width, 4), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :width]
    pixels[((yy - size / 2) / size) ** 2 + ((xx - width / 2) / width) ** 2 < 0.1] = (*colour, 255)
    return Image.fromarray(pixels, "RGBA")


def test_one_loader_two_error_policies(tmp_path) -> None:
    """"skip" leaves an unreadable file out with one warning naming it (training); "raise" names it in
    the error (scoring); the files both read give the same pixels."""
    _disc(16, (200, 0, 0)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    _disc(16, (0, 0, 200)).save(tmp_path / "c.png")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image file\(s\)[\s\S]*b\.png"):
        kept, paths = load_image_folder(tmp_path, resolution=None, on_error="skip")
    assert paths == ["a.png", "c.png"]
    with pytest.raises(BadImageError, match=r"b\.png: cannot read image \(unreadable image header"):
        load_image_folder(tmp_path, resolution=None, on_error="raise")
    (tmp_path / "b.png").unlink()
    read, _ = load_image_folder(tmp_path, resolution=None, on_error="raise")
    assert all(torch.equal(x, y) for x, y in zip(kept, read, strict=True))
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'skip'"):
        load_image_folder(tmp_path, resolution=None, on_error="ignore")


def test_one_loader_resize_policy(tmp_path) -> None:
    """resolution=None keeps each file's size; R pads to a centred square on white and resizes to R x R
    (a file already R x R comes back unchanged)."""
    _disc(16, (0, 150, 0)).save(tmp_path / "a.png")
    _disc(10, (0, 150, 0), width=30).save(tmp_path / "wide.png")
    own, _ = load_image_folder(tmp_path, resolution=None, on_error="raise")
    assert [tuple(x.shape) for x in own] == [(3, 16, 16), (3, 10, 30)]
    squared, _ = load_image_folder(tmp_path, resolution=16, on_error="raise")
    assert [tuple(x.shape) for x in squared] == [(3, 16, 16), (3, 16, 16)]
    assert torch.equal(squared[0], own[0])
    wide = squared[1]
    assert (wide[:, :2] == 255).all() and (wide[:, -2:] == 255).all()  # padding above and below
    assert wide[1, 8, 8] > 100 and wide[0, 8, 8] < 60  # the green ellipse stays in the middle


def test_a_manifest_listing_missing_files(tmp_path) -> None:
    """Scoring refuses the dataset before reading anything; training leaves the file out, named."""
    (tmp_path / "images").mkdir()
    _disc(16, (9, 9, 9)).save(tmp_path / "images" / "0.png")
    (tmp_path / "manifest.csv").write_text("path\nimages/0.png\nimages/gone.png\n")
    with pytest.raises(NoImagesError, match=r"manifest.csv: 1 listed files are missing, e.g. .*gone.png"):
        load_image_folder(tmp_path, resolution=None, on_error="raise")
    with pytest.warns(UserWarning, match="gone.png"):
        assert load_training_images(tmp_path).shape == (1, 3, 16, 16)


def test_a_subset_is_chosen_before_reading(tmp_path) -> None:
    for i in range(5):
        _disc(8, (40 * i, 0, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "9.png").write_bytes(b"broken, but never read")
    images, paths = load_image_folder(tmp_path, resolution=None, on_error="raise", max_images=3, how="first")
    assert paths == ["0.png", "1.png", "2.png"] and len(images) == 3


def test_training_images_must_be_squares_of_one_size(tmp_path) -> None:
    """Kept at their stored size (resolution=None on a dataset), training images must all be R x R:
    the error names the files (a resolution resizes them)."""
    (tmp_path / "images").mkdir()
    _disc(16, (1, 2, 3)).save(tmp_path / "images" / "0.png")
    _disc(16, (1, 2, 3), width=20).save(tmp_path / "images" / "1.png")
    (tmp_path / "manifest.csv").write_text("path\nimages/0.png\nimages/1.png\n")
    with pytest.raises(BadImageError, match=r"squares of one size \(images/0.png is 16x16, images/1.png is 20x16\)"):
        load_training_images(tmp_path)
    assert load_training_images(tmp_path, resolution=8).shape == (2, 3, 8, 8)
