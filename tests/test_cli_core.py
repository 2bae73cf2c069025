"""`pokediff train` then `pokediff sample` on CPU, as a user runs them (real subprocesses)."""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
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

    # Same seed, same images; the sampler is deterministic at eta = 0. A second grid in the same folder
    # gets its own strip and info, named after it; the first grid's stay as they were.
    first_info = (tmp_path / "sample_info.json").read_bytes()
    r = _pokediff("sample", "--checkpoint", "run/model.safetensors", "--sampler", "ddim", "--steps", "5",
                  "--num-images", "5", "--out", "again.png", *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "again_progression.png").exists()
    assert json.loads((tmp_path / "again_info.json").read_text())["num_images"] == 5
    assert (tmp_path / "sample_info.json").read_bytes() == first_info
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


# ------------------------------------------------------------------------------------------------
# One error boundary: every user error is ONE line `pokediff <cmd>: ...` on stderr, never a traceback.
# ------------------------------------------------------------------------------------------------
POKEDIFF = str(Path(sys.executable).with_name("pokediff"))  # the real console script of this venv
ALIAS_BOMB = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{n}: &{n} [{','.join([f'*{p}'] * 9)}]" for p, n in zip("abcdefg", "bcdefgh")]
    + ["train: {steps: *h}"]
) + "\n"


def _console(*args, cwd, env=None, timeout=300):
    return subprocess.run([POKEDIFF, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "POKEDIFF_DEBUG": "0", **(env or {})})


def _assert_one_line(r, code, *fragments):
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert len(lines) == 1, r.stderr[-3000:]
    assert r.returncode == code, (r.returncode, r.stderr)
    assert lines[0].startswith(("pokediff: ", "pokediff ")), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "folder.yaml").mkdir()
    (root / "binary.yaml").write_bytes(bytes(range(256)) * 8)
    (root / "bomb.yaml").write_text(ALIAS_BOMB)
    (root / "garbage.pt").write_bytes(b"this is not a checkpoint\n" * 10)
    (root / "empty").mkdir()
    (root / "a-file").write_text("not a folder\n")
    _image_folder(root / "imgs", n=4)
    return root


BAD_CASES = {
    # id: (argv, exit code, fragments of the one line)
    "missing-params": (["train", "--params", "nope.yaml"], 2, ["pokediff train: nope.yaml: no such params file"]),
    "folder-params": (["train", "--params", "folder.yaml"], 2, ["folder.yaml: is a folder"]),
    "binary-params": (["train", "--params", "binary.yaml"], 2, ["binary.yaml: not a UTF-8 text file"]),
    "alias-bomb": (["train", "--params", "bomb.yaml"], 2, ["bomb.yaml: not valid YAML: anchors and aliases"]),
    "bool-steps": (["train", "-S", "train.steps=true"], 2, ["train.steps: expected a number, not a boolean"]),
    "bad-betas": (["train", "-S", "train.betas=[0.9,2]"], 2, ["train.betas: each must be in [0, 1)"]),
    "section-is-value": (["train", "-S", "train=5"], 2, ["train: expected a section (mapping), got 5"]),
    "section-is-value-with-flag": (["train", "--out-dir", "x", "-S", "train=5"], 2,
                                   ["pokediff train: train: expected a section (mapping), got 5"]),
    "many-bad-keys": (["train", "-S", "train.lr=-1", "-S", "train.steps=0", "-S", "sample.eta=9",
                       "-S", "model.dropout=3", "-S", "train.stepz=1"], 2, ["train.lr", "(+2 more)"]),
    "bad-option-value": (["train", "--steps", "many"], 2, ["argument --steps: invalid int value"]),
    "unknown-command": (["trian"], 2, ["invalid choice"]),
    "missing-overlay": (["train", "--overlay", "nope.yaml"], 2, ["nope.yaml: no such overlay file"]),
    "unreadable-checkpoint": (["sample", "--checkpoint", "garbage.pt", "--params", "none"], 1,
                              ["garbage.pt: not a readable checkpoint"]),
    "no-images": (["train", "--data", "empty", "--params", "none", "--no-track", *TINY], 1, ["empty"]),
    "out-dir-is-a-file": (["train", "--data", "imgs", "--out-dir", "a-file", "--params", "none", "--no-track",
                           *TINY], 1, ["a-file: File exists [EEXIST]"]),
    "does-not-fit": (["train", "--data", "imgs", "--params", "none", "--device", "cpu",
                      "-S", "train.batch_size=1000000"], 1,
                     ["needs about", "train.batch_size", "model.base_channels", "configs/cpu-small.yaml"]),
    "no-such-device": (["train", "--data", "imgs", "--params", "none", "--device", "tpu"], 2, ["--device"]),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_every_user_error_is_one_line(bad_inputs, case):
    argv, code, fragments = BAD_CASES[case]
    r = _console(*argv, cwd=bad_inputs)
    _assert_one_line(r, code, *fragments)
    assert len(r.stderr) < 2500


def test_alias_bomb_fails_fast_with_small_memory(bad_inputs):
    # On main this 326-byte file took 15 s, 2.4 GB and wrote a 660 MB error message.
    script = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
              "r = subprocess.run(sys.argv[1:], capture_output=True); "
              "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
              "len(r.stderr), r.returncode)")
    r = subprocess.run([sys.executable, "-c", script, POKEDIFF, "train", "--params", "bomb.yaml"],
                       cwd=bad_inputs, capture_output=True, text=True, timeout=120)
    seconds, peak_kib, err_bytes, code = r.stdout.split()
    assert int(code) == 2 and int(err_bytes) < 300
    assert int(peak_kib) < 300 * 1024, f"peak RSS {int(peak_kib) // 1024} MiB"
    assert float(seconds) < 30


def test_debug_shows_the_traceback(bad_inputs):
    for argv, env in ((["--debug", "train", "--params", "nope.yaml"], {}),
                      (["train", "--params", "nope.yaml"], {"POKEDIFF_DEBUG": "1"})):
        r = _console(*argv, cwd=bad_inputs, env=env)
        assert r.returncode == 2
        assert "Traceback (most recent call last)" in r.stderr and "ConfigError" in r.stderr
        assert r.stderr.strip().splitlines()[-1] == \
            "pokediff train: nope.yaml: no such params file (use --params none for the built-in defaults)"


def test_write_errors_deep_in_torch_save_are_one_line(bad_inputs, tmp_path):
    # A file-size limit makes the checkpoint write fail inside torch.save's C++ writer (EFBIG), as a full
    # disk does (ENOSPC): the errno is only in the chained exception, under an "[enforce fail ...]" line.
    import resource

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))  # Python ignores SIGXFSZ

    r = subprocess.run([POKEDIFF, "train", "--data", str(bad_inputs / "imgs"), "--out-dir", "run", "--steps", "2",
                        "--batch-size", "2", "--params", "none", "--no-track", "--no-progress", *TINY],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300, preexec_fn=limit_file_size)
    _assert_one_line(r, 1, "File too large [EFBIG]")
    assert "enforce fail" not in r.stderr


def test_os_error_description_finds_enospc_behind_torch_save(tmp_path):
    # /dev/full answers every write with ENOSPC: what torch.save raises on a full disk.
    import torch

    from pokediff.errors import describe_os_error

    f = open("/dev/full", "wb")  # noqa: SIM115 (its close fails too, with ENOSPC)
    try:
        with pytest.raises(RuntimeError) as info:
            torch.save({"w": torch.zeros(100_000)}, f)
    finally:
        with contextlib.suppress(OSError):
            f.close()
    assert "No space left on device" not in str(info.value)  # the C++ assertion line
    assert describe_os_error(info.value).startswith("No space left on device [ENOSPC]")
    missing = FileNotFoundError(2, "No such file or directory", str(tmp_path / "x.png"))
    assert describe_os_error(missing) == f"{tmp_path / 'x.png'}: No such file or directory [ENOENT]"
    assert describe_os_error(KeyError("a bug")) is None
    assert describe_os_error(RuntimeError("a bug")) is None


def test_params_default_and_explicit_defaults(tmp_path):
    # No --params and no ./params.yaml: the built-in defaults; --params none: the defaults, explicitly.
    from pokediff.cli import main

    (tmp_path / "imgs").mkdir()
    for argv in (["train", "--data", "imgs"], ["train", "--params", "none", "--data", "imgs"]):
        r = _console(*argv, "-S", "train.batch_size=1000000", "--device", "cpu", cwd=tmp_path)
        _assert_one_line(r, 1, "batch 1000000")  # got as far as the memory check: params were read
    assert main(["train", "--params", str(tmp_path / "nope.yaml")]) == 2


def test_a_really_full_disk_is_one_line_naming_the_run(bad_inputs, tmp_path):
    # A 1 MiB tmpfs fills up at the first checkpoint: ENOSPC inside torch.save. Needs mount rights (root).
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        r = _console("train", "--data", str(bad_inputs / "imgs"), "--out-dir", str(disk / "run"), "--steps", "2",
                     "--batch-size", "2", "--params", "none", "--no-track", "--no-progress", *TINY, cwd=tmp_path)
        _assert_one_line(r, 1, "No space left on device [ENOSPC]", f"(training into {disk / 'run'})")
    finally:
        subprocess.run(["umount", str(disk)], check=True)
