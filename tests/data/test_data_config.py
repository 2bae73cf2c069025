"""Bad data/validate params fail before any work, with the dotted key named; labels from params."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pokediff.config import ConfigError, load_params
from pokediff.data.sprites import (
    ANIMATED_DIR,
    DREAMWORLD_DIR,
    expected_labels,
    is_selected,
    parse_species,
    parse_sprite_path,
)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.resolution=4", "data.resolution"),
        ("data.frames_per_gif=0", "data.frames_per_gif"),
        ("data.variants=[back]", "data.variants"),
        ("data.variants=[normal, purple]", "data.variants"),
        ("data.variants=[]", "data.variants"),
        ("data.background=[300, 0, 0]", "data.background"),
        ("data.max_pixels=0", "data.max_pixels"),
        ("data.max_quarantine_fraction=1.5", "data.max_quarantine_fraction"),
        ("data.num_workers=-1", "data.num_workers"),
        ("data.source=''", "data.source"),
        ("data.colour=red", "data.colour"),
        ("validate.min_pixel_std=-1", "validate.min_pixel_std"),
        ("validate.max_background_fraction=0", "validate.max_background_fraction"),
        ("validate.min_images=0", "validate.min_images"),
    ],
)
def test_bad_value_names_its_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}(\.\d+)?: "):
        load_params("none", [override])


@pytest.mark.parametrize("command", ["fetch-data", "ingest", "validate"])
def test_cli_rejects_bad_params_before_doing_anything(command: str, tmp_path: Path, pokediff_cli, capsys) -> None:
    out = tmp_path / "never"
    code = pokediff_cli(
        command, "-S", "data.frames_per_gif=0", "-S", f"data.raw_dir={out}", "-S", f"data.out_dir={out}",
        "-S", f"validate.out_dir={out}",
    )
    assert code == 2
    assert "data.frames_per_gif: Input should be greater than or equal to 1" in capsys.readouterr().err
    assert not out.exists()


def test_console_script_reports_the_key_and_exits_2(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  resolution: 64\n  background: [255, 255, 999]\n")
    done = subprocess.run(
        [sys.executable, "-m", "pokediff", "ingest", "--params", str(params)],
        capture_output=True, text=True, cwd=tmp_path, check=False,
    )
    assert done.returncode == 2
    assert f"{params}: data.background: each channel must be in [0, 255]" in done.stderr


def test_expected_labels_follow_the_variant_selection() -> None:
    assert expected_labels(["normal", "shiny"], False) == ["normal", "shiny"]
    assert expected_labels(["shiny", "back"], True) == ["back_shiny", "dreamworld", "shiny"]
    assert expected_labels(["normal", "female"], False) == ["female", "normal"]


@pytest.mark.parametrize(
    ("path", "selected_by"),
    [
        (f"package/{ANIMATED_DIR}25.gif", {"normal"}),
        (f"package/{ANIMATED_DIR}back/shiny/25.gif", {"shiny", "back"}),
        (f"elsewhere/{ANIMATED_DIR}back/female/3.gif", {"normal", "back", "female"}),
        (f"package/{DREAMWORLD_DIR}female/592.svg", {"normal", "female"}),
    ],
)
def test_sprite_selection(path: str, selected_by: set[str]) -> None:
    info = parse_sprite_path(path)
    assert info is not None
    dreamworld = info.dreamworld  # dream world needs data.dreamworld on, as well
    assert is_selected(info, selected_by, dreamworld=dreamworld)
    for missing in selected_by - ({"normal"} if dreamworld else set()):
        assert not is_selected(info, selected_by - {missing}, dreamworld=dreamworld)
    assert not is_selected(info, selected_by, dreamworld=False) or not dreamworld


def test_species_parsing() -> None:
    assert (parse_species("25.gif").species_id, parse_species("25.gif").form) == (25, "")
    assert parse_species("201-question.svg").form == "question"
    assert parse_species("pikachu.png").number is None
    alt = parse_species("10001.gif")  # PokeAPI alternate-form id, not a Pokédex number
    assert (alt.number, alt.species_id, alt.form) == (10001, None, "pokeapi-10001")
