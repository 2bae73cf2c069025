"""The sprites' type labels: the bounded literal parser, the real pinned @pkmn/dex table, the pin check."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pokediff.data.type_labels import (
    MAX_LITERAL_DEPTH,
    TARBALL_NAME,
    TypeLabelError,
    load_type_table,
    parse_literal,
    species_table_from_bundle,
    types_of,
)
from pokediff.pokemon_types import TYPES, UnknownTypeError, parse_label, parse_manifest_types


@pytest.fixture(scope="module")
def labels_tarball(sprites_tarball: Path) -> Path:
    return sprites_tarball.parent / TARBALL_NAME  # fetch-data put it beside the sprites


def test_parse_literal_reads_the_bundle_syntax() -> None:
    text = 'var x = { a: 1, "b-c": [-2.5e1, "q\\"uote", true, null], 7: { H: "x" }, e: [] };'
    assert parse_literal(text, text.index("{")) == {"a": 1, "b-c": [-25.0, 'q"uote', True, None], "7": {"H": "x"},
                                                    "e": []}


@pytest.mark.parametrize("text, words", [
    ("{ a: f() }", "unexpected"),  # a call is code, not data: never evaluated
    ("{ a: `template` }", "unexpected text"),
    ("{ a: 1 b: 2 }", "expected ','"),
    ("[" * (MAX_LITERAL_DEPTH + 2), "nested deeper"),
])
def test_parse_literal_refuses_anything_but_data(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_literal(text)


def test_species_table_from_a_crafted_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = ('// data/species.json\nvar _1 = { a: { inherit: true } };\nvar _2 = {\n'
              '  bulbasaur: { num: 1, name: "Bulbasaur", types: ["Grass", "Poison"] },\n'
              '  rotomwash: { num: 479, name: "Rotom-Wash", forme: "Wash", types: ["Electric", "Water"] },\n'
              '  rotom: { num: 479, name: "Rotom", types: ["Electric", "Ghost"] },\n'
              '  missingno: { num: 0, types: ["Bird"] }\n};\nvar species_default = {\n  "1": _1,\n  "9": _2\n};\n')
    with pytest.raises(ValueError, match="species of 1..649 have no base entry"):
        species_table_from_bundle(bundle)  # the sprites need 1..649: a table without them is refused
    monkeypatch.setattr("pokediff.data.type_labels.MIN_SPECIES", 1)
    table = species_table_from_bundle(bundle)
    assert table == {1: {"": ("grass", "poison")}, 479: {"wash": ("electric", "water"), "": ("electric", "ghost")}}
    assert types_of(table, 479, "wash") == ("electric", "water")
    assert types_of(table, 479, "fan") == ("electric", "ghost")  # a forme the table lacks: the species' types
    assert types_of(table, None, "") == () and types_of(table, 10001, "") == ()


def test_real_table_current_types_for_every_sprite_species(labels_tarball: Path) -> None:
    table = load_type_table(labels_tarball).table
    base = {n: table[n][""] for n in range(1, 650)}
    counts = {t: sum(t in types for types in base.values()) for t in TYPES}
    assert all(counts[t] > 0 for t in TYPES) and counts["fairy"] == 22  # generation VI+ types (Clefairy: fairy)
    assert sum(len(types) == 2 for types in base.values()) == 309  # two-type species of 649
    assert base[6] == ("fire", "flying") and base[35] == ("fairy",) and base[641] == ("flying",)
    assert table[492]["sky"] == ("grass", "flying") and table[550]["bluestriped"] == ("water",)


def test_a_missing_or_changed_label_tarball_is_refused(labels_tarball: Path, tmp_path: Path) -> None:
    with pytest.raises(TypeLabelError, match="pokediff fetch-data"):
        load_type_table(tmp_path / TARBALL_NAME)
    changed = tmp_path / TARBALL_NAME
    shutil.copy(labels_tarball, changed)
    with changed.open("r+b") as f:
        f.seek(1000)
        f.write(b"\0")
    with pytest.raises(TypeLabelError, match="not the pinned"):
        load_type_table(changed)


def test_type_names_parse_and_errors_are_one_line() -> None:
    assert parse_label("Fire/Flying") == ("fire", "flying") and parse_manifest_types("") == ()
    for bad, words in (("fyre", "unknown type 'fyre'; known types: normal, fire"), ("a/b/c", "one type or two"),
                       ("fire/fire", "same type twice"), ("", "one type or two")):
        with pytest.raises(UnknownTypeError, match=words) as caught:
            parse_label(bad)
        assert "\n" not in str(caught.value)
