"""`pokediff train` then `pokediff sample` on CPU, as a user runs them (real subprocesses)."""

import json
import subprocess
import sys

import numpy as np
from PIL import Image

TINY = [
    "-S", "model.base_channels=16", "-S", "model.channel_mults=[1,2]", "-S", "model.num_res_blocks=1",
    "-S", "model.attention_resolutions=[8]", "-S", "model.head_channels=8", "-S", "model.groups=8",
    "-S", "model.resolution=16", "-S", "data.resolution=16",
]


def _pokediff(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pokediff", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def _image_folder(path, n=6):
    rng = np.random.default_rng(0)
    path.mkdir()
    for i in range(n):
        img = np.full((24, 20, 3), 255, np.uint8)
        img[4:20, 3:17] = rng.integers(0, 255, 3)
        Image.fromarray(img).save(path / f"mon_{i}.png")
    return path


def test_train_then_sample_writes_checkpoint_grid_and_pngs(tmp_path):
    data = _image_folder(tmp_path / "imgs")
    r = _pokediff("train", "--data", str(data), "--out-dir", "run", "--steps", "8", "--batch-size", "4",
                  "-S", "train.warmup_steps=2", "-S", "train.checkpoint_every=4", "--no-progress", "--no-track",
                  *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "run" / "train_metrics.json").read_text())
    assert metrics["steps"] == 8 and metrics["dataset_images"] == 6

    r = _pokediff("sample", "--checkpoint", "run/model.safetensors", "--sampler", "ddim", "--steps", "5",
                  "--num-images", "5", "--batch-size", "2", "--out", "grid.png", *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    pngs = sorted((tmp_path / "grid_images").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(5)]
    assert Image.open(pngs[0]).size == (16, 16) and Image.open(pngs[0]).mode == "RGB"
    assert Image.open(tmp_path / "grid.png").size[0] > 16 * 2
    assert (tmp_path / "progression.png").exists()
    info = json.loads((tmp_path / "sample_info.json").read_text())
    assert info["sampler"] == "ddim" and info["steps"] == 5

    # Same seed, same images; the sampler is deterministic at eta = 0.
    r = _pokediff("sample", "--checkpoint", "run/model.safetensors", "--sampler", "ddim", "--steps", "5",
                  "--num-images", "5", "--out", "again.png", *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for a, b in zip(pngs, sorted((tmp_path / "again_images").glob("*.png"))):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_bad_params_stop_before_any_work(tmp_path):
    r = _pokediff("train", "--data", "nowhere", "--out-dir", "run", "-S", "diffusion.schedule=quadratic",
                  cwd=tmp_path)
    assert r.returncode == 2
    assert "diffusion.schedule: Input should be 'linear', 'cosine' or 'sigmoid'" in r.stderr
    assert not (tmp_path / "run").exists()


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    r = _pokediff("sample", "--checkpoint", "nope.pt", cwd=tmp_path)
    assert r.returncode != 0 and "nope.pt: no such checkpoint file" in r.stderr
