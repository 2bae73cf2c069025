"""The Pokémon types: the label vocabulary of type-conditional models. No imports: torch-free and cheap.

A Pokémon has one or two of the 18 types (current games: Fairy since generation VI). Three spellings:

    manifest.csv's ``types`` column    "fire;flying"      (";"-joined, in the species' own order; "" = unlabelled)
    a request (CLI, params, server)    "fire" or "fire/flying"  (one type, or a pair asked for together)
    the network's input                multi-hot (B, NUM_TYPES), row of zeros = the null label (no condition)

Used by params validation (sample.types), ingest (the manifest column), training (label tensors) and
sampling (requests), so the list and the spellings live here once.
"""

from __future__ import annotations

from collections.abc import Iterable

TYPES = ("normal", "fire", "water", "grass", "electric", "ice", "fighting", "poison", "ground", "flying",
         "psychic", "bug", "rock", "ghost", "dragon", "dark", "steel", "fairy")  # the games' own order
NUM_TYPES = len(TYPES)
TYPE_INDEX = {name: i for i, name in enumerate(TYPES)}
MANIFEST_SEPARATOR = ";"  # "fire;flying" in manifest.csv
REQUEST_SEPARATOR = "/"  # "fire/flying" asked for on the CLI, in params or in a request
MAX_TYPES_PER_LABEL = 2
# Written by `pokediff sample` beside the images folder (columns image,type: each image and the label it was
# asked for), read by the score stage to score each type's samples.
SAMPLE_LABELS_NAME = "labels.csv"


class UnknownTypeError(ValueError):
    """A type name that is not one of TYPES, or more than two of them; the message lists the known ones."""


def parse_label(text: str, separator: str = REQUEST_SEPARATOR) -> tuple[str, ...]:
    """"Fire/Flying" -> ("fire", "flying"): one or two distinct known types, lower-cased, order kept.

    Raises UnknownTypeError with a one-line message naming the bad part."""
    parts = [part.strip().lower() for part in str(text).split(separator)]
    if not 1 <= len(parts) <= MAX_TYPES_PER_LABEL or not all(parts):
        raise UnknownTypeError(f"type {str(text)[:40]!r}: give one type or two joined by {separator!r} "
                               f"(e.g. fire or fire{separator}flying)")
    unknown = [part for part in parts if part not in TYPE_INDEX]
    if unknown:
        raise UnknownTypeError(f"unknown type {unknown[0][:40]!r}; known types: {', '.join(TYPES)}")
    if len(set(parts)) != len(parts):
        raise UnknownTypeError(f"type {str(text)[:40]!r} names the same type twice")
    return tuple(parts)


def manifest_text(types: Iterable[str]) -> str:
    """("fire", "flying") -> "fire;flying" (the manifest column; "" for an unlabelled image)."""
    return MANIFEST_SEPARATOR.join(types)


def parse_manifest_types(text: str) -> tuple[str, ...]:
    """manifest.csv's ``types`` cell -> the types; "" -> () (unlabelled)."""
    return () if not text else parse_label(text, MANIFEST_SEPARATOR)


def request_text(types: Iterable[str]) -> str:
    """("fire", "flying") -> "fire/flying": how a label is shown in file names, logs and metrics keys."""
    return REQUEST_SEPARATOR.join(types)


def multi_hot(types: Iterable[str]) -> list[int]:
    """("fire", "flying") -> [0, 1, 0, ..., 1, ...] (NUM_TYPES entries): one label row of the network's
    input (torch.tensor of a list of these is (B, NUM_TYPES)); () -> all zeros, the null label."""
    row = [0] * NUM_TYPES
    for name in types:
        row[TYPE_INDEX[name]] = 1
    return row
