"""Ingest with hostile inputs and a hostile out_dir: nothing lost, nothing read from outside the
source, bounded memory, one-line errors. Every input is a real file made here (Pillow, zipfile,
tarfile, or byte by byte in conftest.py); crashes are real processes killed with SIGKILL, the full
disk a real tmpfs when this machine lets us mount one.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import importlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pokediff.config import DataConfig
from pokediff.data import ingest_workers, sources
from pokediff.data.ingest import IngestError, ingest
from pokediff.data.raster import BadImageError, decode_raster
from pokediff.data.sources import SourceError
from pokediff.errors import PokediffError
from pokediff.locks import LockedError

ingest_module = importlib.import_module("pokediff.data.ingest")  # (pokediff.data.ingest is also a function)
SETTINGS = DataConfig(resolution=32, max_quarantine_fraction=1.0, num_workers=1)
REPO = Path(__file__).resolve().parents[2]


def png(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    """A real image whose pixels say which file it came from."""
    buffer = io.BytesIO()
    image = Image.new("RGB", size, colour)
    image.putpixel((1, 1), (colour[2], colour[0], colour[1]))  # not uniform, so never `background only`
    image.save(buffer, "PNG")
    return buffer.getvalue()


def folder_of(path: Path, files: dict[str, bytes]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:  # strict UTF-8: a bad name would fail here
        return list(csv.DictReader(handle))


def tree(folder: Path) -> dict[str, str]:
    """Every file and link below `folder` (relative path -> sha256 or link target): what must not change."""
    found = {}
    for path in sorted(folder.rglob("*")):
        key = path.relative_to(folder).as_posix()
        if path.is_symlink():
            found[key] = "-> " + os.readlink(path)
        elif path.is_file():
            found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def mean_colour(dataset: Path, row: dict[str, str]) -> tuple[int, ...]:
    with Image.open(dataset / row["path"]) as image:
        return tuple(int(round(v)) for v in np.asarray(image).reshape(-1, 3).mean(axis=0))


@pytest.fixture
def first_dataset(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A good dataset in tmp_path/ds, and the digest of everything in it."""
    source = folder_of(tmp_path / "first", {f"{i}.png": png((40 * i, 10, 200)) for i in range(1, 5)})
    ingest(source, tmp_path / "ds", SETTINGS, sprite_layout=False, progress=False)
    return tmp_path / "ds", tree(tmp_path / "ds")


def run_pokediff(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real command in a child process (params from defaults only)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))
    return subprocess.run(
        [sys.executable, "-m", "pokediff", args[0], "--params", "none", *args[1:]],
        capture_output=True, text=True, errors="backslashreplace", env=env, timeout=timeout,
    )


def assert_one_line_error(stderr: str, *words: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    for word in words:
        assert word in lines[0], lines[0]


# ----------------------------------------------------------------------------------------------
# The previous dataset survives everything
# ----------------------------------------------------------------------------------------------
def test_killed_ingest_leaves_the_previous_dataset_and_the_next_one_recovers(
    first_dataset: tuple[Path, dict[str, str]], sprites_tarball: Path
) -> None:
    out, before = first_dataset
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))
    child = subprocess.Popen(  # the real sprites take ~20 s to decode: plenty of time to kill it
        [sys.executable, "-m", "pokediff", "ingest", "--quiet", "--params", "none",
         "--source", str(sprites_tarball), "--out-dir", str(out), "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (out / ".ingest-build" / "images").is_dir():
            assert child.poll() is None and time.monotonic() < deadline, "ingest never started building"
            time.sleep(0.05)
        time.sleep(1.0)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert (out / ".ingest-build").is_dir()  # killed half-way ...
    leftovers = {".ingest-build", ".pokediff.lock"}
    assert {k: v for k, v in tree(out).items() if k.split("/")[0] not in leftovers} == before  # ... old one intact
    source = folder_of(out.parent / "second", {"9.png": png((1, 2, 3))})
    report = ingest(source, out, SETTINGS, sprite_layout=False, progress=False)  # stale lock + build recovered
    assert [row.source for row in report.rows] == ["9.png"]
    assert sorted(p.name for p in out.iterdir()) == [
        "ignored.csv", "images", "ingest_summary.json", "manifest.csv", "quarantine.csv"]


def test_exception_while_writing_keeps_the_previous_dataset(first_dataset, tmp_path: Path, monkeypatch) -> None:
    out, before = first_dataset
    source = folder_of(tmp_path / "second", {"9.png": png((1, 2, 3))})

    def fail(*args, **kwargs):
        raise RuntimeError("simulated crash after the images were written")

    monkeypatch.setattr(ingest_module, "write_manifest", fail)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ingest(source, out, SETTINGS, sprite_layout=False, progress=False)
    assert tree(out) == before  # no half-built folder, no lock left either


def test_failed_swap_is_rolled_back(first_dataset, tmp_path: Path, monkeypatch) -> None:
    out, before = first_dataset
    source = folder_of(tmp_path / "second", {"9.png": png((1, 2, 3))})
    real_rename, calls = os.rename, []

    def rename(src, dst):  # the 8th rename of the swap (new files moving in) hits an I/O error
        calls.append(src)
        if len(calls) == 8:
            raise OSError(errno.EIO, "Input/output error")
        real_rename(src, dst)

    monkeypatch.setattr(ingest_module.os, "rename", rename)
    with pytest.raises(IngestError, match=r"Input/output error \[EIO\]; the previous dataset .* is unchanged"):
        ingest(source, out, SETTINGS, sprite_layout=False, progress=False)
    assert len(calls) > 8  # the rollback renamed things back
    assert tree(out) == before


def test_unusable_result_does_not_replace_the_previous_dataset(first_dataset, tmp_path: Path) -> None:
    out, before = first_dataset
    junk = folder_of(tmp_path / "junk", {"a.png": b"", "b.gif": b"GIF89a"})
    with pytest.raises(IngestError, match=r"no usable images: 2 file\(s\) quarantined") as caught:
        ingest(junk, out, SETTINGS, sprite_layout=False, progress=False)
    assert "\n" not in str(caught.value) and str(out / ".ingest-rejected" / "quarantine.csv") in str(caught.value)
    assert {k: v for k, v in tree(out).items() if not k.startswith(".ingest-rejected/")} == before
    assert {row["path"] for row in read_csv(out / ".ingest-rejected" / "quarantine.csv")} == {"a.png", "b.gif"}
    ingest(tmp_path / "first", out, SETTINGS, sprite_layout=False, progress=False)
    assert tree(out) == {k: v for k, v in before.items() if k != "ingest_summary.json"} | {
        "ingest_summary.json": tree(out)["ingest_summary.json"]}  # the rejected folder is gone again


# ----------------------------------------------------------------------------------------------
# out_dir: only ingest's own files are ever touched
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("foreign", "named"), [
    ("notes.txt", "notes.txt"), ("images/holiday.jpg", "images/holiday.jpg"),
    ("images/album/1.png", "images/album"), ("mlruns/x", "mlruns"),
    # ingest's reserved folders are deleted whole: on main whatever a user put there went with them
    (".ingest-rejected/my-notes.txt", ".ingest-rejected/my-notes.txt"),
    (".ingest-rejected/images/holiday.jpg", ".ingest-rejected/images/holiday.jpg"),
    (".ingest-build/keep.me", ".ingest-build/keep.me"), (".ingest-previous/a/b", ".ingest-previous/a"),
])
def test_foreign_files_in_out_dir_are_refused_and_kept(first_dataset, tmp_path: Path, foreign: str,
                                                       named: str) -> None:
    out, _ = first_dataset
    (out / foreign).parent.mkdir(parents=True, exist_ok=True)
    (out / foreign).write_bytes(b"mine")
    before = tree(out)
    with pytest.raises(IngestError, match="was not written by `pokediff ingest`: refusing to delete") as caught:
        ingest(tmp_path / "first", out, SETTINGS, sprite_layout=False, progress=False)
    assert str(caught.value).startswith(f"{out / named} was not written")
    assert tree(out) == before


def test_images_symlink_in_out_dir_is_one_line_and_nothing_is_followed(tmp_path: Path) -> None:
    photos = folder_of(tmp_path / "photos", {"holiday.jpg": b"my photo", "000000.png": png((5, 5, 5))})
    out = tmp_path / "ds"
    out.mkdir()
    (out / "manifest.csv").write_text("path\n")
    (out / "images").symlink_to(photos)
    source = folder_of(tmp_path / "src", {"1.png": png((9, 9, 9))})
    before = tree(tmp_path / "photos")
    result = run_pokediff("ingest", "--quiet", "--source", str(source), "--out-dir", str(out))
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "pokediff ingest:", str(out / "images"), "symbolic link")
    assert tree(tmp_path / "photos") == before and (out / "images").is_symlink()
    assert sorted(p.name for p in out.iterdir()) == ["images", "manifest.csv"]  # lock released


def test_second_ingest_into_the_same_out_dir_waits_its_turn(first_dataset, tmp_path: Path) -> None:
    out, before = first_dataset
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))
    holder = subprocess.Popen(  # a real second process holding the ingest lock
        [sys.executable, "-c", "import sys, time\nfrom pokediff.locks import OutDirLock\n"
         f"with OutDirLock({str(out)!r}, 'ingest'):\n    print('held', flush=True)\n    time.sleep(60)"],
        env=env, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        source = folder_of(tmp_path / "second", {"9.png": png((1, 2, 3))})
        result = run_pokediff("ingest", "--quiet", "--source", str(source), "--out-dir", str(out))
        assert result.returncode == 1
        assert_one_line_error(result.stderr, "another `pokediff ingest`", f"pid {holder.pid}")
        with pytest.raises(LockedError):
            ingest(source, out, SETTINGS, sprite_layout=False, progress=False)
        assert {k: v for k, v in tree(out).items() if k != ".pokediff.lock"} == before
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding the lock: a stale lock
        holder.wait()
    assert [r.source for r in ingest(source, out, SETTINGS, sprite_layout=False, progress=False).rows] == ["9.png"]


# ----------------------------------------------------------------------------------------------
# A full disk
# ----------------------------------------------------------------------------------------------
def test_write_error_is_one_line_naming_the_file_and_keeps_the_dataset(first_dataset, tmp_path: Path,
                                                                     monkeypatch) -> None:
    """Injected ENOSPC (runs everywhere); the tmpfs test below makes a real one where it can."""
    out, before = first_dataset
    source = folder_of(tmp_path / "second", {"9.png": png((1, 2, 3))})

    def disk_full(rows, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ingest_module, "write_quarantine", disk_full)
    with pytest.raises(IngestError) as caught:
        ingest(source, out, SETTINGS, sprite_layout=False, progress=False)
    message = str(caught.value)
    assert message.startswith(f"cannot write {out / '.ingest-build' / 'quarantine.csv'}: No space left on device "
                              "[ENOSPC]") and "\n" not in message
    assert tree(out) == before


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A real 1 MiB tmpfs, or a skip where this process may not mount (not root)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()[:100]}); the injected ENOSPC test covers it")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_real_full_disk_is_one_line_and_keeps_the_dataset(tiny_disk: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    small = folder_of(tmp_path / "small", {"1.png": png((1, 2, 3))})
    big = folder_of(tmp_path / "big", {  # incompressible: 120 x ~12 KB of 64x64 PNGs do not fit in 1 MiB
        f"{i}.png": _encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))) for i in range(120)
    })
    out = tiny_disk / "ds"
    assert run_pokediff("ingest", "--quiet", "--source", str(small), "--out-dir", str(out)).returncode == 0
    before = tree(out)
    result = run_pokediff("ingest", "--quiet", "--source", str(big), "--out-dir", str(out))
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "cannot write", str(out / ".ingest-build"), "[ENOSPC]",
                          "previous dataset", "unchanged")
    assert tree(out) == before


def _encode(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------
# Archives: same names, odd names, bombs
# ----------------------------------------------------------------------------------------------
RED, BLUE = (220, 20, 20), (20, 20, 220)


def _archive(path: Path, members: list[tuple[str, bytes]]) -> Path:
    if path.suffix == ".zip":
        with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as archive:
            warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": exactly what we want
            for name, data in members:
                archive.writestr(name, data)
    else:
        with tarfile.open(path, "w:gz") as archive:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("kind", [".zip", ".tar.gz"])
def test_same_named_members_are_never_merged_silently(tmp_path: Path, kind: str) -> None:
    archive = _archive(tmp_path / f"set{kind}",
                       [("a.png", png(RED)), ("b.png", png((0, 200, 0))), ("./a.png", png(BLUE))])
    report = ingest(archive, tmp_path / "ds", SETTINGS, sprite_layout=False, progress=False)
    rows = read_csv(tmp_path / "ds" / "manifest.csv")
    assert sorted(row["source"] for row in rows) == ["./a.png", "b.png"]
    kept = next(row for row in rows if row["source"] == "./a.png")
    assert mean_colour(tmp_path / "ds", kept)[2] > 150  # the last one (blue), as extracting would keep
    quarantine = read_csv(tmp_path / "ds" / "quarantine.csv")
    assert [row["path"] for row in quarantine] == ["a.png"]
    assert "holds 2 members named 'a.png'" in quarantine[0]["reason"] and "shadowed" in quarantine[0]["reason"]
    assert report.summary["duplicates_dropped"] == 0


def test_archive_member_names_are_only_labels(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    names = ["../../escape.png", "/etc/absolute.png", "a/../../up.png", "ok/sub/../fine.png"]
    archive = _archive(work / "odd.tar.gz", [(n, png((30 * i, 50, 90))) for i, n in enumerate(names)])
    before = tree(tmp_path)
    report = ingest(archive, work / "ds", SETTINGS, sprite_layout=False, progress=False)
    assert [row.source for row in report.rows] == ["/etc/absolute.png"]  # a label, never a path we open
    ignored = {row.path: row.reason for row in report.ignored}
    assert set(ignored) == {"../../escape.png", "a/../../up.png", "ok/sub/../fine.png"}
    assert all("'..'" in reason for reason in ignored.values())
    added = set(tree(tmp_path)) - set(before)
    assert added and all(name.startswith("work/ds/") for name in added)


def _measured(code: str) -> dict:
    """Run `code` (which sets `result`) in a fresh interpreter; its result plus its peak RSS in MB."""
    script = (
        "import json\n" + code +
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent (this test run)
        "\nhwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
        "result['peak_rss_mb'] = int(hwm.split()[1]) / 1024\n"
        "print(json.dumps(result))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ingest_measured(source: Path, out: Path) -> dict:
    return _measured(
        "from pathlib import Path\n"
        "from pokediff.config import DataConfig\nfrom pokediff.data.ingest import ingest\n"
        f"report = ingest(Path({str(source)!r}), Path({str(out)!r}), "
        "DataConfig(resolution=32, max_quarantine_fraction=1.0, num_workers=1), sprite_layout=False, progress=False)\n"
        "result = {'used': sorted(r.source for r in report.rows),\n"
        "          'quarantined': {r.path: r.reason for r in report.quarantined}}\n"
    )


# Peak RSS of a fresh interpreter ingesting a couple of small files is ~90 MB; main reached 1.1-3.7 GB
# on these inputs (see the notes of issue 8).
RSS_LIMIT_MB = 400

PATTERN_SVG = (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><pattern id="p" width="%d" '
               b'height="%d" patternUnits="userSpaceOnUse"><rect width="%d" height="%d" fill="red"/></pattern>'
               b'<rect width="10" height="10" fill="url(#p)"/></svg>')

BOMBS = {  # name -> (maker, expected words of the quarantine reason)
    "frame.gif": (lambda h: h["gif_with_big_frame"](13000, 13000), "a GIF frame extends the canvas to 13000x13000"),
    "embedded.svg": (lambda h: h["svg_embedding"](h["blank_png"](23000, 23000)),
                     "SVG embeds an image that is refused: declared size"),
    "wide.png": (lambda h: h["blank_png"](4_000_000, 1), "pads to a 4000000x4000000 square"),
    # a 3000-unit pattern tile drawn at 64/10 px per unit (resolution 32): a 19200^2 pixmap, 1.45 GB
    "pattern.svg": (lambda h: PATTERN_SVG % ((3000,) * 4), "SVG renderer died of signal"),
    # at 100000 units resvg's allocation fails, which aborts the process (main: the whole ingest)
    "huge-pattern.svg": (lambda h: PATTERN_SVG % ((100000,) * 4), "SVG renderer died of signal"),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_decoder_bombs_are_quarantined_in_bounded_memory(tmp_path: Path, hostile, name: str) -> None:
    make, reason = BOMBS[name]
    source = folder_of(tmp_path / "src", {name: make(hostile), "good.png": png(RED)})
    result = _ingest_measured(source, tmp_path / "ds")
    assert result["used"] == ["good.png"]
    assert reason in result["quarantined"][name]
    assert result["peak_rss_mb"] < RSS_LIMIT_MB, result


def test_gif_frames_are_each_held_to_max_pixels(hostile) -> None:
    data = hostile["gif_with_big_frame"](100, 90)  # 8x8 screen and first frame, 100x90 second frame
    with pytest.raises(BadImageError, match="extends the canvas to 100x90 = 9,000 pixels"):
        decode_raster(data, frames_per_animation=2, max_pixels=8_999)
    frames = decode_raster(data, frames_per_animation=2, max_pixels=9_000)
    assert [frame.image.size for frame in frames] == [(8, 8), (100, 90)]


def test_zip_member_lying_about_its_size_is_read_in_bounded_memory(tmp_path: Path, hostile) -> None:
    archive = tmp_path / "liar.zip"  # declares 1,000 bytes, inflates to 1.5 GiB
    archive.write_bytes(hostile["zip_of_zeros"]([("liar.png", 1536, 1000)], {"good.png": png(RED)}))
    result = _ingest_measured(archive, tmp_path / "ds")
    assert result["used"] == ["good.png"]
    assert "Bad CRC-32" in result["quarantined"]["liar.png"]  # only the declared 1,000 bytes were inflated
    assert result["peak_rss_mb"] < RSS_LIMIT_MB, result


def test_zip_inflating_past_the_total_limit_is_refused_whole(first_dataset, tmp_path: Path, hostile) -> None:
    """The limit is max(1 GiB, 100 x the archive); lowered to 256 MiB here to keep the test fast."""
    out, before = first_dataset
    archive = tmp_path / "bomb.zip"  # 0.5 MB of file, 8 members of 60 MiB each: 480 MiB
    archive.write_bytes(hostile["zip_of_zeros"]([(f"m{i:02d}.png", 60, -1) for i in range(8)]))
    result = _measured(
        "from pathlib import Path\n"
        "from pokediff.data import sources\n"
        "from pokediff.config import DataConfig\nfrom pokediff.data.ingest import ingest\n"
        "sources.MIN_TOTAL_BYTES = 256 * 1024 * 1024\n"
        "try:\n"
        f"    ingest(Path({str(archive)!r}), Path({str(out)!r}), DataConfig(num_workers=1), sprite_layout=False,"
        " progress=False)\n"
        "    result = {}\n"
        "except sources.SourceError as exc:\n"
        "    result = {'error': str(exc)}\n"
    )
    assert result["error"].startswith(f"{archive}: inflates to more than 268,435,456 bytes in total")
    assert "refusing it as a decompression bomb" in result["error"]
    assert result["peak_rss_mb"] < RSS_LIMIT_MB, result
    assert tree(out) == before


def test_batches_are_bounded_in_bytes() -> None:
    tasks = [(i, ".png", b"x" * (6 << 20)) for i in range(5)] + [(5, ".png", OSError("unreadable"))]
    sizes = [len(batch) for batch in ingest_workers._batches(iter(tasks))]
    assert sizes == [2, 2, 2]  # 16 MiB per batch, not 16 files


def test_tar_with_too_many_members_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sources, "MAX_ENTRIES", 10)
    archive = _archive(tmp_path / "many.tar.gz", [(f"{i}.png", b"") for i in range(11)])
    with pytest.raises(SourceError, match="more than 10 members; refusing it as a tar bomb"):
        ingest(archive, tmp_path / "ds", SETTINGS, sprite_layout=False, progress=False)


# ----------------------------------------------------------------------------------------------
# Nothing outside the source is read
# ----------------------------------------------------------------------------------------------
SECRET = (0, 255, 0)


def test_symlinks_in_a_source_folder_are_listed_not_followed(tmp_path: Path) -> None:
    outside = folder_of(tmp_path / "outside", {"secret.png": png(SECRET), "more/also.png": png(SECRET)})
    source = folder_of(tmp_path / "src", {"real.png": png(RED)})
    (source / "to-outside.png").symlink_to(outside / "secret.png")
    (source / "to-inside.png").symlink_to(source / "real.png")
    (source / "to-nowhere.png").symlink_to(tmp_path / "missing.png")
    (source / "folder-link").symlink_to(outside / "more")
    report = ingest(source, tmp_path / "ds", SETTINGS, sprite_layout=False, progress=False)
    assert [row.source for row in report.rows] == ["real.png"]
    ignored = {row["path"]: row["reason"] for row in read_csv(tmp_path / "ds" / "ignored.csv")}
    assert "to a path outside the source; links are not followed" in ignored["to-outside.png"]
    assert "to a path inside the source" in ignored["to-inside.png"]
    assert "does not exist" in ignored["to-nowhere.png"]
    assert "symbolic link (folder) to a path outside the source" in ignored["folder-link"]


SVG_OPEN = '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="32" height="32">'
LEAKY_SVGS = {  # each would draw the green secret into the dataset if rendered as is
    "absolute.svg": SVG_OPEN + '<image href="{secret}" width="32" height="32"/></svg>',
    "relative.svg": SVG_OPEN + '<image href="secret.png" width="32" height="32"/></svg>',
    "xlink.svg": SVG_OPEN + '<image xlink:href="file://{secret}" width="32" height="32"/></svg>',
    "entity.svg": '<!DOCTYPE svg [<!ENTITY where "{secret}">]>' + SVG_OPEN
                  + '<image href="&where;" width="32" height="32"/></svg>',
    "filter.svg": SVG_OPEN + '<filter id="f"><feImage href="{secret}"/></filter>'
                  '<rect width="32" height="32" filter="url(#f)"/></svg>',
    "css.svg": SVG_OPEN + '<rect width="32" height="32" style="fill: url(\'{secret}\')"/></svg>',
    "import.svg": SVG_OPEN + '<style>@import "{secret}.css";</style><rect width="9" height="9"/></svg>',
    "external-entity.svg": '<!DOCTYPE svg [<!ENTITY x SYSTEM "{secret}">]>' + SVG_OPEN + '<text>&x;</text></svg>',
}


def test_svg_never_reads_files_outside_itself(tmp_path: Path, monkeypatch) -> None:
    secret = folder_of(tmp_path / "outside", {"secret.png": png(SECRET, (32, 32))}) / "secret.png"
    monkeypatch.chdir(secret.parent)  # where a relative href would resolve
    files = {name: svg.format(secret=secret).encode() for name, svg in LEAKY_SVGS.items()}
    files["inline.svg"] = (SVG_OPEN + '<defs><rect id="r" width="32" height="32" fill="blue"/></defs>'
                           '<use href="#r"/><image width="8" height="8" href="data:image/png;base64,'
                           + __import__("base64").b64encode(png(RED, (8, 8))).decode() + '"/></svg>').encode()
    source = folder_of(tmp_path / "src", files)
    report = ingest(source, tmp_path / "ds", SETTINGS, sprite_layout=False, progress=False)
    assert [row.source for row in report.rows] == ["inline.svg"]  # data: URIs and #fragments still render
    reasons = {row.path: row.reason for row in report.quarantined}
    assert set(reasons) == set(LEAKY_SVGS)
    for name, reason in reasons.items():
        assert "external" in reason or "outside the file" in reason, (name, reason)


# ----------------------------------------------------------------------------------------------
# Names that are not UTF-8
# ----------------------------------------------------------------------------------------------
def test_non_utf8_names_are_kept_as_escapes(tmp_path: Path) -> None:
    raw_name = os.fsdecode(b"pika\xff\xfe.png")  # what os.listdir returns for these bytes
    source = tmp_path / "src"
    source.mkdir()
    try:
        (source / raw_name).write_bytes(png(RED))
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses non-UTF-8 names")
    (source / "ok.png").write_bytes(png(BLUE))
    archive = tmp_path / "names.tar"
    with tarfile.open(archive, "w", encoding="utf-8", errors="surrogateescape") as tar:
        tar.add(source / raw_name, raw_name)
    for given, out in ((source, tmp_path / "ds"), (archive, tmp_path / "ds-tar")):
        result = run_pokediff("ingest", "--quiet", "--source", str(given), "--out-dir", str(out))
        assert result.returncode == 0, result.stderr[-2000:]
        sources_seen = {row["source"] for row in read_csv(out / "manifest.csv")}
        assert "pika\\xff\\xfe.png" in sources_seen


def test_data_errors_are_pokediff_errors_and_keep_their_old_base() -> None:
    """The CLI prints any PokediffError as one line; code catching the old bases keeps working."""
    from pokediff.data.fetch import FetchError
    from pokediff.data.image_folder import NoImagesError
    from pokediff.data.ingest_workers import WorkerCrashedError

    for error, old_base in ((IngestError, RuntimeError), (SourceError, ValueError), (BadImageError, ValueError),
                            (FetchError, RuntimeError), (NoImagesError, FileNotFoundError),
                            (WorkerCrashedError, RuntimeError)):
        assert issubclass(error, PokediffError) and issubclass(error, old_base), error


def test_a_rejected_dataset_of_its_own_is_still_cleared_by_the_next_ingest(first_dataset, tmp_path: Path) -> None:
    out, before = first_dataset
    junk = folder_of(tmp_path / "junk", {"a.png": b"", "b.gif": b"GIF89a"})
    with pytest.raises(IngestError, match="no usable images"):
        ingest(junk, out, SETTINGS, sprite_layout=False, progress=False)
    (out / ".ingest-rejected" / ".manifest.csv.x1y2.tmp").write_bytes(b"")  # what a kill mid-write leaves
    ingest(tmp_path / "first", out, SETTINGS, sprite_layout=False, progress=False)
    assert not (out / ".ingest-rejected").exists()


# ----------------------------------------------------------------------------------------------
# CSVs a spreadsheet opens: no cell runs as a formula, and pokediff reads back the exact names
# ----------------------------------------------------------------------------------------------
FORMULA_NAMES = ["=HYPERLINK(1).png", "+1+2.png", "-3.png", "@SUM(1).png", "\tx.png", "'quoted.png",
                 "25-=cmd.png"]  # the last: a sprite-style name whose form ("=cmd") starts a cell


def _cells(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [cell for row in csv.reader(handle) for cell in row]


def test_names_that_a_spreadsheet_would_run_are_neutralised_in_every_csv(tmp_path: Path) -> None:
    # On main "=HYPERLINK(1).png" was written verbatim into manifest.csv and quarantine.csv.
    files = {name: png((10 * i, 100, 50)) for i, name in enumerate(FORMULA_NAMES, 1)}
    files |= {"=broken.png": b"not a png", "plain.png": png((1, 2, 3))}
    source = folder_of(tmp_path / "src", files)
    os.symlink("plain.png", source / "@link.png")  # ignored.csv: links are never followed
    ingest(source, tmp_path / "ds", SETTINGS, sprite_layout=False, progress=False)
    for name in ("manifest.csv", "quarantine.csv", "ignored.csv"):
        cells = _cells(tmp_path / "ds" / name)
        assert len(cells) > 2 and not [c for c in cells if c.startswith(("=", "+", "-", "@", "\t", "\r"))], name

    from pokediff.data.manifest import read_manifest
    from pokediff.data.sources import display_name

    manifest = read_manifest(tmp_path / "ds" / "manifest.csv")
    # read back exactly as written: formula cells restored, control characters shown as \xNN escapes
    assert sorted(manifest["source"]) == sorted([*map(display_name, FORMULA_NAMES), "plain.png"])
    assert "\\x09x.png" in set(manifest["source"])
    assert manifest.set_index("source").loc["25-=cmd.png", "form"] == "=cmd"
    assert "plain.png" in (tmp_path / "ds" / "manifest.csv").read_text().split(",")  # ordinary names unchanged


def test_neutralise_is_exactly_undone_and_leaves_ordinary_cells_alone() -> None:
    from pokediff.csv_cells import neutralise, restore

    for cell in [*FORMULA_NAMES, "", "'", "''=x", "sprites/pokemon/25.gif", "images/000001.png", "a=b"]:
        assert restore(neutralise(cell)) == cell
    assert neutralise("sprites/pokemon/versions/generation-v/black-white/animated/shiny/25.gif").startswith("s")
    assert [neutralise(c) for c in ("=1", "-1", "a-1")] == ["'=1", "'-1", "a-1"]
