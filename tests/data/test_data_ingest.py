"""Ingest: the real sprites, the sprite layout rules, every class of bad input, determinism, archives."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pokediff.config import DataConfig
from pokediff.data.ingest import IngestError, ingest
from pokediff.data.manifest import MANIFEST_COLUMNS, read_manifest
from pokediff.data.raster import decode_raster
from pokediff.data.sprites import ANIMATED_DIR, DREAMWORLD_DIR, TARBALL_NAME
from pokediff.pixels import pixel_sha256

SERIAL = DataConfig(num_workers=1)  # decode in this process (data.num_workers=0 would start one per CPU)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def summary_of(dataset: Path) -> dict:
    return json.loads((dataset / "ingest_summary.json").read_text())


def tree_digest(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file below `folder` by relative path."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip
    }


# ----------------------------------------------------------------------------------------------
# The real sprites
# ----------------------------------------------------------------------------------------------
def test_real_sprites_ingest_counts_and_labels(sprites_dataset: Path) -> None:
    summary = summary_of(sprites_dataset)
    manifest = read_manifest(sprites_dataset / "manifest.csv")
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert summary["images"] == len(manifest) == len(list((sprites_dataset / "images").glob("*.png")))
    assert set(summary["images_per_variant"]) == {"normal", "shiny"}
    assert all(count > 1200 for count in summary["images_per_variant"].values())
    assert summary["quarantined"] == 0 and read_csv(sprites_dataset / "quarantine.csv") == []
    assert summary["files_used"] == 1548  # 774 front + 774 shiny front GIFs (Substitute excluded)
    assert summary["species"] == 649
    assert summary["ignored"]["sprite package file outside the sprite folders"] == 6
    assert summary["ignored"]["sprite without a species number (not a Pokémon)"] == 2
    assert summary["ignored"]["variant 'back' not selected (data.variants/dreamworld)"] == 773
    # two frames per animation: frame 0 and the middle one (dropped when equal to frame 0)
    assert summary["duplicates_dropped"] > 0
    assert summary["images"] + summary["duplicates_dropped"] <= 2 * summary["files_used"]
    assert set(manifest["frame"][manifest["n_frames"] == 1]) <= {0}
    middle = manifest[manifest["frame"] > 0]
    assert len(middle) > 500 and (middle["frame"] == middle["n_frames"] // 2).all()
    assert manifest["species_id"].between(1, 649).all()
    assert (manifest[["width", "height"]] == 64).all().all() and set(manifest["mode"]) == {"RGB"}
    assert manifest["sha256"].is_unique and manifest["path"].is_unique
    forms = set(manifest.loc[manifest["species_id"] == 201, "form"])
    assert {"b", "z", "question", "exclamation"} <= forms  # Unown letters kept apart as forms (201-a = 201)


def test_real_sprites_pngs_match_their_manifest_rows(sprites_dataset: Path) -> None:
    manifest = read_manifest(sprites_dataset / "manifest.csv")
    for row in manifest.sample(60, random_state=0).itertuples():
        with Image.open(sprites_dataset / row.path) as image:
            assert (image.size, image.mode) == ((64, 64), "RGB")
            pixels = np.asarray(image)
        assert pixel_sha256(pixels) == row.sha256
        assert abs(pixels.std() - row.std) < 1e-3
        assert tuple(pixels[0, 0]) == (255, 255, 255)  # corners are background on every sprite


def test_ingest_is_byte_identical_across_runs_and_worker_counts(sprites_dataset: Path, sprites_tarball: Path,
                                                               tmp_path: Path) -> None:
    """The session dataset was decoded by 2 worker processes; this run decodes in-process."""
    again = tmp_path / "again"
    ingest(sprites_tarball, again, SERIAL, sprite_layout=True, progress=False)
    assert tree_digest(again, skip=("ingest_summary.json",)) == tree_digest(
        sprites_dataset, skip=("ingest_summary.json",)
    )
    first, second = summary_of(sprites_dataset), summary_of(again)
    first.pop("seconds"), second.pop("seconds")
    first.pop("source"), second.pop("source")  # the same file, given by two spellings of its path
    assert first == second


# ----------------------------------------------------------------------------------------------
# Sprite layout rules, on a small copy of the real tarball
# ----------------------------------------------------------------------------------------------
def test_sprite_layout_variants_dreamworld_and_package_files(mini_sprites: Path, tmp_path: Path,
                                                             pokediff_cli) -> None:
    out = tmp_path / "ds"
    code = pokediff_cli(
        "ingest", "--quiet", "--source", str(mini_sprites), "--out-dir", str(out),
        "-S", "data.variants=[normal, shiny, back]", "-S", "data.dreamworld=true",
    )
    assert code == 0
    manifest = read_manifest(out / "manifest.csv")
    sources = {label: set(group["source"].str.split("/").str[-1]) for label, group in manifest.groupby("variant")}
    assert sources == {
        "normal": {"1.gif", "25.gif", "201-a.gif", "487-origin.gif"},
        "shiny": {"1.gif", "25.gif"},
        "back": {"1.gif", "25.gif"},
        "back_shiny": {"1.gif"},
        "dreamworld": {"1.svg", "25.svg"},
    }
    forms = dict(zip(manifest["source"].str.split("/").str[-1], zip(manifest["species_id"], manifest["form"])))
    assert forms["201-a.gif"] == (201, "a") and forms["487-origin.gif"] == (487, "origin")
    assert read_csv(out / "quarantine.csv") == []  # package.json & co. are not quarantined ...
    ignored = {row["path"].removeprefix("package/"): row["reason"] for row in read_csv(out / "ignored.csv")}
    assert ignored["package.json"] == ignored["README.md"] == "sprite package file outside the sprite folders"
    assert "not a Pokémon" in ignored[ANIMATED_DIR + "substitute.gif"]  # ... but listed
    assert "'female' not selected" in ignored[ANIMATED_DIR + "female/25.gif"]
    assert "not selected" in ignored[DREAMWORLD_DIR + "female/592.svg"]
    dream = manifest[manifest["variant"] == "dreamworld"]
    assert (dream["n_frames"] == 1).all() and (dream["std"] > 20).all()


def test_female_variant_selects_female_sprites(mini_sprites: Path, tmp_path: Path) -> None:
    settings = DataConfig(variants=["normal", "female"], dreamworld=True, num_workers=1)
    report = ingest(mini_sprites, tmp_path / "ds", settings, sprite_layout=True, progress=False)
    by_source = {row.source.split("sprites/pokemon/")[1]: row.variant for row in report.rows}
    assert by_source["versions/generation-v/black-white/animated/female/25.gif"] == "female"
    assert by_source["other/dream-world/female/592.svg"] == "dreamworld"
    assert "shiny" not in set(by_source.values())


# ----------------------------------------------------------------------------------------------
# Any folder or archive, and bad input
# ----------------------------------------------------------------------------------------------
def make_good_images(folder: Path, sprite_member) -> list[str]:
    """Real sprite pixels in every raster format we read, nested, plus a real SVG."""
    gif = sprite_member(ANIMATED_DIR + "25.gif")
    frame = decode_raster(gif, frames_per_animation=1, max_pixels=10**6)[0].image  # RGBA
    flat = Image.new("RGB", frame.size, "white")
    flat.paste(frame, mask=frame.getchannel("A"))
    files = {
        "25-pikachu.gif": gif,
        "nested/deeper/4.png": _encode(frame, "PNG"),
        "7.jpg": _encode(flat.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "JPEG"),
        "nested/10.webp": _encode(frame.rotate(90, expand=True), "WEBP", lossless=True),
        "art/1.svg": sprite_member(DREAMWORLD_DIR + "1.svg"),
    }
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return sorted(files)


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


BAD_FILES = {  # name -> (content maker, expected words in the quarantine reason)
    "bad/empty.png": (lambda gif: b"", "empty file"),
    "bad/truncated.gif": (lambda gif: gif[: len(gif) // 2], "truncated GIF"),
    "bad/corrupt.jpg": (lambda gif: np.random.default_rng(0).bytes(3000), "not an image"),
    "bad/text-as.png": (lambda gif: b"just some text, not a PNG", "not an image"),
    "bad/notes.txt": (lambda gif: b"my notes", "unknown extension .txt"),
    "bad/no-extension": (lambda gif: b"data", "unknown extension (none)"),
    "bad/broken.svg": (lambda gif: b'<svg xmlns="http://www.w3.org/2000/svg"><rect', "unreadable SVG"),
    "bad/not-really.svg": (lambda gif: b"GIF89a", "not an SVG document"),
    "bad/bomb.png": (None, "exceeds the limit"),  # made by the bomb_png fixture
    "bad/bomb.svg": (
        lambda gif: b'<svg xmlns="http://www.w3.org/2000/svg" width="90000" height="90000"><rect/></svg>',
        "exceeds the limit",
    ),
}


@pytest.fixture
def messy_folder(tmp_path: Path, sprite_member, bomb_png) -> Path:
    folder = tmp_path / "messy"
    folder.mkdir()
    make_good_images(folder, sprite_member)
    gif = sprite_member(ANIMATED_DIR + "25.gif")
    for name, (make, _) in BAD_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(make(gif) if make else bomb_png(20_000, 20_000))
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / ".thumbnails").mkdir()
    (folder / ".thumbnails" / "x.png").write_bytes(b"")
    return folder


def test_every_bad_file_is_quarantined_with_its_reason(messy_folder: Path, tmp_path: Path) -> None:
    settings = DataConfig(max_quarantine_fraction=1.0, num_workers=2)
    report = ingest(messy_folder, tmp_path / "ds", settings, sprite_layout=False, progress=False)
    quarantine = {row["path"]: row["reason"] for row in read_csv(tmp_path / "ds" / "quarantine.csv")}
    assert set(quarantine) == set(BAD_FILES)
    for name, (_, reason) in BAD_FILES.items():
        assert reason in quarantine[name], (name, quarantine[name])
    ignored = {row["path"] for row in read_csv(tmp_path / "ds" / "ignored.csv")}
    assert ignored == {".DS_Store", ".thumbnails/x.png"}  # hidden files: listed, not quarantined
    used = {row.source for row in report.rows}
    assert used == {"25-pikachu.gif", "nested/deeper/4.png", "7.jpg", "nested/10.webp", "art/1.svg"}
    assert {row.species_id for row in report.rows} == {25, 4, 7, 10, 1}
    assert report.summary["quarantined"] == len(BAD_FILES)
    assert report.summary["files_considered"] == len(BAD_FILES) + 5


def test_too_many_quarantined_files_fail_naming_them(messy_folder: Path, tmp_path: Path,
                                                     pokediff_cli, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ds"
    assert pokediff_cli("ingest", "--quiet", "--source", str(messy_folder), "--out-dir", str(out)) == 1
    err = capsys.readouterr().err
    assert f"{len(BAD_FILES)} of {len(BAD_FILES) + 5} image files quarantined" in err
    assert "data.max_quarantine_fraction" in err
    assert "bad/bomb.png: declared size exceeds the limit" in err  # first few named, in path order
    assert f"and {len(BAD_FILES) - 5} more" in err
    assert "\n" not in err.strip()  # one line
    assert not (out / "manifest.csv").exists()  # an unusable dataset never replaces one ...
    assert len(read_csv(out / ".ingest-rejected" / "quarantine.csv")) == len(BAD_FILES)  # ... but is kept to read


def test_nothing_usable_fails_and_says_why(tmp_path: Path) -> None:
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    (folder / "b.gif").write_bytes(b"GIF89a")
    with pytest.raises(IngestError, match=r"no usable images: 2 file\(s\) quarantined") as caught:
        ingest(folder, tmp_path / "ds", DataConfig(max_quarantine_fraction=1.0, num_workers=1), sprite_layout=False,
               progress=False)
    assert "a.png: empty file" in str(caught.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match="no image files in the source"):
        ingest(tmp_path / "empty", tmp_path / "ds2", SERIAL, sprite_layout=False, progress=False)


def test_duplicates_are_dropped_keeping_the_first_and_counted(tmp_path: Path) -> None:
    folder = tmp_path / "dups"
    folder.mkdir()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "b.png")
    Image.fromarray(pixels).save(folder / "a.png")  # same pixels, sorts first
    Image.fromarray(pixels).save(folder / "c.webp", lossless=True)  # same pixels, other format
    Image.fromarray(255 - pixels).save(folder / "d.png")
    report = ingest(folder, tmp_path / "ds", SERIAL, sprite_layout=False, progress=False)
    assert [row.source for row in report.rows] == ["a.png", "d.png"]
    assert report.summary["duplicates_dropped"] == 2
    assert report.summary["duplicates_per_variant"] == {"normal": 2}


def test_zip_and_tar_gz_sources_give_the_same_dataset_as_the_folder(tmp_path: Path, sprite_member) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    names = make_good_images(folder, sprite_member)
    with zipfile.ZipFile(tmp_path / "images.zip", "w") as archive:
        for name in reversed(names):  # archive order must not matter
            archive.write(folder / name, name)
    with tarfile.open(tmp_path / "images.tar.gz", "w:gz") as archive:
        for name in names:
            archive.add(folder / name, name)
    digests = []
    for source in (folder, tmp_path / "images.zip", tmp_path / "images.tar.gz"):
        out = tmp_path / f"ds-{source.name}"
        ingest(source, out, DataConfig(resolution=32, num_workers=1), sprite_layout=False, progress=False)
        digests.append(tree_digest(out, skip=("ingest_summary.json",)))
    assert digests[0] == digests[1] == digests[2]
    assert len([k for k in digests[0] if k.startswith("images/")]) == len(names)


def test_corrupt_archive_member_is_quarantined_not_fatal(tmp_path: Path, sprite_member) -> None:
    good = sprite_member(ANIMATED_DIR + "25.gif")
    archive_path = tmp_path / "set.zip"
    with zipfile.ZipFile(archive_path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("25.gif", good)
        archive.writestr("1.gif", sprite_member(ANIMATED_DIR + "1.gif"))
    raw = bytearray(archive_path.read_bytes())
    offset = raw.find(good[100:140])  # stored uncompressed: flip bytes inside 25.gif's data
    raw[offset : offset + 20] = bytes(20)
    archive_path.write_bytes(bytes(raw))
    report = ingest(archive_path, tmp_path / "ds", DataConfig(max_quarantine_fraction=1.0, num_workers=1),
                    sprite_layout=False, progress=False)
    quarantine = {row.path: row.reason for row in report.quarantined}
    assert quarantine.keys() == {"25.gif"} and "cannot read file: BadZipFile: Bad CRC-32" in quarantine["25.gif"]
    assert {row.source for row in report.rows} == {"1.gif"}


def test_out_dir_of_someone_else_is_not_wiped(tmp_path: Path, sprite_member) -> None:
    source = tmp_path / "src"
    source.mkdir()
    make_good_images(source, sprite_member)
    precious = tmp_path / "photos" / "images" / "holiday.jpg"
    precious.parent.mkdir(parents=True)
    precious.write_bytes(b"my photo")
    with pytest.raises(IngestError, match="refusing to delete"):
        ingest(source, tmp_path / "photos", SERIAL, sprite_layout=False, progress=False)
    assert precious.read_bytes() == b"my photo"
    with pytest.raises(IngestError, match="inside the source folder"):
        ingest(source, source / "out", SERIAL, sprite_layout=False, progress=False)
    ingest(source, tmp_path / "ds", SERIAL, sprite_layout=False, progress=False)
    with pytest.raises(IngestError, match="inside out_dir"):  # would delete its own input
        ingest(tmp_path / "ds" / "images", tmp_path / "ds", SERIAL, sprite_layout=False, progress=False)
    assert len(list((tmp_path / "ds" / "images").iterdir())) == 5


def test_reingest_replaces_stale_images(tmp_path: Path, sprite_member) -> None:
    source = tmp_path / "src"
    source.mkdir()
    make_good_images(source, sprite_member)
    out = tmp_path / "ds"
    ingest(source, out, SERIAL, sprite_layout=False, progress=False)
    (out / "images" / "999999.png").write_bytes(b"stale")
    shutil.rmtree(source / "nested")
    report = ingest(source, out, SERIAL, sprite_layout=False, progress=False)
    assert sorted(p.name for p in (out / "images").iterdir()) == [Path(r.path).name for r in report.rows]


def test_cli_without_fetched_sprites_says_how_to_get_them(tmp_path: Path, pokediff_cli,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    args = ("ingest", "--quiet", "-S", f"data.raw_dir={tmp_path}", "-S", f"data.out_dir={tmp_path / 'ds'}")
    assert pokediff_cli(*args) == 1
    assert "pokediff fetch-data" in capsys.readouterr().err
    (tmp_path / TARBALL_NAME).write_bytes(b"some other file")
    assert pokediff_cli(*args) == 1
    assert "not the pinned tarball" in capsys.readouterr().err
