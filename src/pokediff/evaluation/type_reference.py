"""Reference statistics per Pokémon type: the per-type FID/KID of a type-conditional model.

    compute_type_reference_stats("outputs/dataset", "outputs/ref_stats_types", max_per_type=40)
    -> outputs/ref_stats_types/{fire,water,...}.npz (reference.py's format) + index.json

A type's reference set is the dataset's images having that type among their types (manifest column
``types``; a two-type image is in both sets), a fixed-seed random subset of at most ``max_per_type``
(0 = all). Inception runs once over the union of the subsets. Like ref_stats.npz the folder is a cache:
a type whose file already holds the stats of the same pixels is not recomputed.

Scoring a model's samples of type T against ``T.npz`` (stages/score.py) is the per-type FID; samples
of T come from a label T alone, which the model learnt from every image having T (training/labels.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pokediff.data.image_folder import load_image_folder, subset_indices
from pokediff.data.manifest import MANIFEST_NAME, TYPES_COLUMN, read_manifest
from pokediff.evaluation.inception import DEFAULT_BATCH_SIZE, extract_features, extractor_id
from pokediff.evaluation.reference import (
    ReferenceStats,
    load_reference_stats,
    save_reference_stats,
    stats_from_features,
)
from pokediff.files import write_atomic
from pokediff.limits import read_small_json
from pokediff.pixels import content_hash
from pokediff.pokemon_types import TYPES, parse_manifest_types

INDEX_NAME = "index.json"


def type_members(dataset_dir: Path) -> dict[str, list[str]]:
    """{type: [relative image path, ...]} from the dataset's manifest (every type, possibly empty)."""
    manifest = Path(dataset_dir) / MANIFEST_NAME
    if not manifest.is_file():
        raise FileNotFoundError(f"no {MANIFEST_NAME} in {dataset_dir}: per-type statistics need an ingested dataset")
    frame = read_manifest(manifest)
    if TYPES_COLUMN not in frame.columns:
        raise ValueError(f"{manifest}: no {TYPES_COLUMN} column (only the sprites are labelled with types)")
    members: dict[str, list[str]] = {name: [] for name in TYPES}
    for path, text in zip(frame["path"], frame[TYPES_COLUMN], strict=True):
        for name in parse_manifest_types(text):
            members[name].append(path)
    return members


def compute_type_reference_stats(dataset_dir: str | Path, out_dir: str | Path, *, max_per_type: int = 0,
                                 seed: int = 0, batch_size: int = DEFAULT_BATCH_SIZE,
                                 device: str | torch.device = "auto", progress: bool = False) -> dict[str, dict]:
    """Write <out_dir>/<type>.npz for every type with at least 2 images, and index.json
    {type: {"file", "n", "content_hash"}}; returns the index. Images are read as the score stage reads
    samples (load_image_folder, their own size)."""
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    chosen = {name: [paths[i] for i in subset_indices(len(paths), max_per_type, seed, how="random")]
              for name, paths in type_members(dataset_dir).items()}
    union = sorted({p for paths in chosen.values() for p in paths})
    position = {p: i for i, p in enumerate(union)}
    images, loaded = load_image_folder(dataset_dir, resolution=None, on_error="raise")
    by_path = dict(zip(loaded, images, strict=True))
    pixels = [by_path[p] for p in union]
    ext_id = extractor_id("tf1")
    todo: dict[str, list[int]] = {}
    index: dict[str, dict] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, paths in chosen.items():
        if len(paths) < 2:
            continue
        rows = [position[p] for p in paths]
        digest = content_hash(pixels[i] for i in rows)
        index[name] = {"file": f"{name}.npz", "n": len(rows), "content_hash": digest}
        if not _cached(out_dir / f"{name}.npz", digest, ext_id):
            todo[name] = rows
    if todo:
        needed = sorted({i for rows in todo.values() for i in rows})
        features = extract_features([pixels[i] for i in needed], batch_size, device, progress=progress)
        row_of = {i: k for k, i in enumerate(needed)}
        for name, rows in todo.items():
            stats = stats_from_features(features[[row_of[i] for i in rows]], index[name]["content_hash"], ext_id,
                                        [union[i] for i in rows])
            save_reference_stats(stats, out_dir / f"{name}.npz")
    write_atomic(out_dir / INDEX_NAME, json.dumps(index, indent=2, sort_keys=True) + "\n")
    return index


def _cached(path: Path, digest: str, ext_id: str) -> bool:
    if not path.is_file():
        return False
    try:
        cached = load_reference_stats(path)
    except ValueError:
        return False
    return cached.content_hash == digest and cached.extractor == ext_id


def load_type_reference_stats(out_dir: str | Path) -> dict[str, ReferenceStats]:
    """{type: ReferenceStats} listed by <out_dir>/index.json ({} when the index lists none)."""
    out_dir = Path(out_dir)
    index_path = out_dir / INDEX_NAME
    if not index_path.is_file():
        raise FileNotFoundError(f"{index_path}: per-type reference statistics not found "
                                "(run `pokediff ref-stats --per-type` first)")
    index = read_small_json(index_path)
    out = {}
    if not isinstance(index, dict):
        raise ValueError(f"{index_path}: expected a JSON object of types")
    for name, entry in index.items():
        if name not in TYPES or not isinstance(entry, dict):
            raise ValueError(f"{index_path}: unexpected entry {str(name)[:40]!r}")
        out[name] = load_reference_stats(out_dir / f"{name}.npz")
    return out



