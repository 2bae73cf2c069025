"""Species -> types, from the pinned `@pkmn/dex` npm package: the labels of type-conditional training.

Why this source: the package is MIT-licensed (its package.json; the data is Pokémon Showdown's), it is
on the same npm registry as the sprites (fetched with `npm pack`, pinned by sha256 like them, tracked
by data.dvc), and it lists every species and alternate forme with its types. Its data files are
bundled into ``build/index.js`` as JavaScript object literals (esbuild marks each one, e.g.
``// data/species.json``); we read that one member with the sprites' archive rules (a regular file,
size-capped, never extracted) and parse only the species table with a bounded literal parser below.
Nothing is executed.

Which types: the current games' (the package's generation-IX table, 18 types with Fairy). The sprites
are generation-V drawings, but a Pokémon's picture does not change with the type chart, and users ask
for today's types ("a fairy-type Pokémon"): Clefairy is labelled fairy, not normal (22 of the 649
species differ from their generation-V types, all by Fairy).

Table layout (species number -> forme key -> types):

    {1: {"": ("grass", "poison")}, 479: {"": ("electric", "ghost"), "wash": ("electric", "water"), ...}}

A sprite file ``479-wash.gif`` gets the "wash" forme's types; a form the table does not know (the
Unown letters ``201-a`` ..., cosmetic forms) gets its species' own types.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from pokediff.data.fetch import PinnedPackage, matches_pin
from pokediff.data.sources import SourceError, TarSource
from pokediff.errors import PokediffError
from pokediff.pokemon_types import TYPE_INDEX

PACKAGE_NAME = "@pkmn/dex"
PACKAGE_VERSION = "0.10.11"
PACKAGE_SPEC = f"{PACKAGE_NAME}@{PACKAGE_VERSION}"
TARBALL_NAME = f"pkmn-dex-{PACKAGE_VERSION}.tgz"  # what `npm pack @pkmn/dex@0.10.11` writes
TARBALL_SHA256 = "ca4c1912805c295ae90cd5f2d0f465cceec1093757af44469bde9788681ad55b"
TARBALL_SIZE = 4_842_059
LICENSE = "MIT"
PIN = PinnedPackage(PACKAGE_SPEC, TARBALL_NAME, TARBALL_SHA256, TARBALL_SIZE)

DATA_MEMBER = "package/build/index.js"  # 2.4 MB; every data file of the package, bundled
MAX_MEMBER_BYTES = 16 * 2**20
SPECIES_MARKER = "// data/species.json"
CURRENT_GENERATION = "9"  # the package's full table; the others are deltas against it
MAX_LITERAL_DEPTH = 16  # the species table nests 4 levels (table, species, baseStats, ...)
MIN_SPECIES = 649  # the sprites' National Pokédex numbers run 1..649: all must be in the table

TypeTable = dict[int, dict[str, tuple[str, ...]]]


class TypeLabelError(PokediffError, ValueError):
    """The label tarball is missing, not the pinned file, or its data is not what this reader expects."""


# ----------------------------------------------------------------------------------------------
# A bounded parser for the JavaScript object literals of the bundle (JSON plus bare keys)
# ----------------------------------------------------------------------------------------------
_TOKEN = re.compile(r'\s*(?:(?P<punct>[{}\[\]:,])|(?P<string>"(?:[^"\\\n]|\\.)*")'
                    r"|(?P<number>-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?)|(?P<word>[A-Za-z_$][\w$]*))")
_WORDS = {"true": True, "false": False, "null": None}


class _LiteralParser:
    """Objects, arrays, double-quoted strings, numbers, true/false/null; keys bare, quoted or numeric.
    Anything else (a function, a variable reference, a template string) is an error, not evaluated."""

    def __init__(self, text: str, start: int):
        self.text, self.pos = text, start

    def _next(self) -> tuple[str, str]:
        match = _TOKEN.match(self.text, self.pos)
        if match is None:
            raise ValueError(f"unexpected text at offset {self.pos}: {self.text[self.pos:self.pos + 30]!r}")
        self.pos = match.end()
        kind = match.lastgroup or ""
        return kind, match.group(kind)

    def value(self, depth: int = 0):
        if depth > MAX_LITERAL_DEPTH:
            raise ValueError(f"nested deeper than {MAX_LITERAL_DEPTH} levels at offset {self.pos}")
        kind, token = self._next()
        if token == "{":
            return self._object(depth)
        if token == "[":
            return self._array(depth)
        if kind == "string":
            return _unquote(token)
        if kind == "number":
            return float(token) if any(c in token for c in ".eE") else int(token)
        if kind == "word" and token in _WORDS:
            return _WORDS[token]
        raise ValueError(f"unexpected {token!r} at offset {self.pos} (not a data literal)")

    def _object(self, depth: int) -> dict:
        out: dict = {}
        kind, token = self._next()
        while token != "}":
            if kind not in ("word", "string", "number"):
                raise ValueError(f"expected a key at offset {self.pos}, got {token!r}")
            key = _unquote(token) if kind == "string" else token
            if self._next()[1] != ":":
                raise ValueError(f"expected ':' after key {key!r} at offset {self.pos}")
            out[key] = self.value(depth + 1)
            kind, token = self._next()
            if token == ",":
                kind, token = self._next()
            elif token != "}":
                raise ValueError(f"expected ',' or '}}' at offset {self.pos}, got {token!r}")
        return out

    def _array(self, depth: int) -> list:
        out: list = []
        while True:
            save = self.pos
            if self._next()[1] == "]":
                return out
            self.pos = save
            out.append(self.value(depth + 1))
            token = self._next()[1]
            if token == "]":
                return out
            if token != ",":
                raise ValueError(f"expected ',' or ']' at offset {self.pos}, got {token!r}")


def _unquote(token: str) -> str:
    return json.loads(token)  # the literal's strings are JSON strings (double quotes, backslash escapes)


def parse_literal(text: str, start: int = 0):
    """The data literal that starts at ``text[start:]`` (leading blanks allowed) -> Python values."""
    return _LiteralParser(text, start).value()


# ----------------------------------------------------------------------------------------------
# The species table
# ----------------------------------------------------------------------------------------------
def _variable_at(text: str, name: str, after: int) -> int:
    """Offset of the literal assigned by ``var <name> = `` after ``after``."""
    match = re.compile(rf"^var {re.escape(name)} = ", re.M).search(text, after)
    if match is None:
        raise ValueError(f"no 'var {name} = ' after the species marker")
    return match.end()


def species_table_from_bundle(text: str) -> TypeTable:
    """build/index.js's text -> the current generation's species table (see the module docstring)."""
    marker = text.find(SPECIES_MARKER)
    if marker < 0:
        raise ValueError(f"no {SPECIES_MARKER!r} section")
    # `var species_default = { "1": _42, ..., "9": _49 }` names the variable of each generation's table.
    by_generation = re.compile(r'^var species_default = \{(?P<body>[^}]*)\}', re.M).search(text, marker)
    if by_generation is None:
        raise ValueError("no species_default mapping in the species section")
    names = dict(re.findall(r'"(\d+)":\s*([A-Za-z_$][\w$]*)', by_generation["body"]))
    if CURRENT_GENERATION not in names:
        raise ValueError(f"species_default has no generation {CURRENT_GENERATION} table")
    species = parse_literal(text, _variable_at(text, names[CURRENT_GENERATION], marker))
    if not isinstance(species, dict):
        raise ValueError("the species table is not an object")
    table: TypeTable = {}
    for key, entry in species.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("num"), int) or entry["num"] < 1:
            continue  # MissingNo. (0) and the fan-made CAP species (negative numbers)
        types = entry.get("types")
        if not isinstance(types, list) or not 1 <= len(types) <= 2:
            raise ValueError(f"species {key!r}: types must be a list of one or two names, got {types!r}")
        names_lower = tuple(str(t).lower() for t in types)
        unknown = [t for t in names_lower if t not in TYPE_INDEX]
        if unknown:
            raise ValueError(f"species {key!r}: unknown type {unknown[0]!r}")
        forme = _forme_key(str(entry.get("forme", "")))
        table.setdefault(entry["num"], {})[forme] = names_lower
    missing = [n for n in range(1, MIN_SPECIES + 1) if "" not in table.get(n, {})]
    if missing:
        raise ValueError(f"{len(missing)} species of 1..{MIN_SPECIES} have no base entry, e.g. {missing[0]}")
    return table


def _forme_key(name: str) -> str:
    """"Pa'u" / "Blue-Striped" / "Origin" -> "pau" / "bluestriped" / "origin": letters and digits only,
    lower case, so the sprite file suffixes (487-origin, 550-blue-striped) find them."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def types_of(table: TypeTable, species_id: int | None, form: str) -> tuple[str, ...]:
    """The types of a species (and form); () when the number is unknown (not a Pokémon of the table)."""
    if species_id is None or species_id not in table:
        return ()
    formes = table[species_id]
    return formes.get(_forme_key(form), formes[""]) if form else formes[""]


@dataclass(frozen=True)
class TypeSource:
    """The parsed table and where it came from (for ingest's summary)."""

    table: TypeTable
    package: str = PACKAGE_SPEC
    license: str = LICENSE


def load_type_table(tarball: Path) -> TypeSource:
    """Read the species table from the pinned tarball; TypeLabelError (one line, naming the file) when
    it is missing, is not the pinned file, or does not hold the expected data."""
    if not tarball.is_file():
        raise TypeLabelError(f"{tarball} not found: the type labels of the sprites come from {PACKAGE_SPEC}; "
                             "run `pokediff fetch-data` (or `dvc pull data.dvc`)")
    if not matches_pin(tarball, TARBALL_SHA256, TARBALL_SIZE):
        raise TypeLabelError(f"{tarball} is not the pinned {PACKAGE_SPEC} tarball (sha256 differs): "
                             "run `pokediff fetch-data --force`")
    try:
        with TarSource(tarball) as source:
            entries = [e for e in source.entries() if e.name == DATA_MEMBER]
            if len(entries) != 1 or not entries[0].regular or entries[0].size > MAX_MEMBER_BYTES:
                raise TypeLabelError(f"{tarball}: expected one regular file {DATA_MEMBER} of at most "
                                     f"{MAX_MEMBER_BYTES:,} bytes")
            text = source.read(entries[0]).decode("utf-8")
        return TypeSource(species_table_from_bundle(text))
    except (SourceError, OSError, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, TypeLabelError):
            raise
        raise TypeLabelError(f"{tarball}: cannot read the species types ({str(exc)[:200]})") from None
