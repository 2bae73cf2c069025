"""load_training_images (ingested dataset or any folder) and PokemonDataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pokediff.data.dataset import NoImagesError, PokemonDataset, load_training_images
from pokediff.data.manifest import read_manifest
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


def test_pokemon_dataset_scales_and_flips(sprites_dataset) -> None:
    plain = PokemonDataset(sprites_dataset, hflip=False)
    flipping = PokemonDataset(sprites_dataset, hflip=True)
    assert len(plain) == len(flipping) > 1000
    x = plain[7]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.max() == 1  # white background -> 1
    assert torch.equal(plain[7], x)  # no randomness without hflip
    torch.manual_seed(0)
    draws = [flipping[7] for _ in range(40)]
    mirrored = [torch.equal(d, x.flip(-1)) for d in draws]
    assert all(m or torch.equal(d, x) for m, d in zip(mirrored, draws))
    assert 5 < sum(mirrored) < 35  # both orientations occur
    batch = next(iter(torch.utils.data.DataLoader(plain, batch_size=8)))
    assert batch.shape == (8, 3, 64, 64)
