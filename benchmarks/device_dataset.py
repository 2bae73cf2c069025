"""The ingested sprites, carried compactly to the GPU machine and turned back into an image folder there.

    pack_images(dataset_dir, carry_dir)    # here: <carry>/dataset.u8.xz + dataset.json
    unpack_images(carry_dir, images_dir)   # there: images_dir/000000.png ... (the same pixels, same order)

Format: the uint8 array (N, 3, R, R) of ``pokediff.data.image_folder.load_training_images`` (manifest order), its raw
bytes xz-compressed, with a JSON header holding the shape and the sha256 of the raw bytes. The 2,572
ingested 64x64 sprites: 31.6 MB raw, 14.7 MB as PNGs, 9.6 MB this way (xz sees the white backgrounds
of all images at once; PNG compresses each alone). Unpacking decompresses at most the declared size,
checks the hash and writes lossless PNGs, so `pokediff train --data <images_dir>` trains on exactly the
pixels (and so with the same run fingerprint) as here.
"""

from __future__ import annotations

import hashlib
import json
import lzma
from pathlib import Path

ARRAY_FILE, HEADER_FILE = "dataset.u8.xz", "dataset.json"
MAX_RAW_BYTES = 1 << 30  # a carried dataset is tens of MB; refuse to allocate what a header merely declares


def pack_images(dataset_dir: str | Path, carry_dir: str | Path, resolution: int = 64) -> dict:
    from pokediff.data.image_folder import load_training_images

    images = load_training_images(dataset_dir, resolution)  # uint8 (N, 3, R, R)
    raw = images.contiguous().numpy().tobytes()
    carry = Path(carry_dir)
    carry.mkdir(parents=True, exist_ok=True)
    (carry / ARRAY_FILE).write_bytes(lzma.compress(raw, preset=9))
    header = {"shape": list(images.shape), "dtype": "uint8", "sha256": hashlib.sha256(raw).hexdigest(),
              "source": str(dataset_dir), "compressed_bytes": (carry / ARRAY_FILE).stat().st_size}
    (carry / HEADER_FILE).write_text(json.dumps(header, indent=2) + "\n")
    return header


def unpack_images(carry_dir: str | Path, images_dir: str | Path) -> dict:
    import numpy as np
    import torch

    from pokediff.pixels import save_pngs

    carry = Path(carry_dir)
    header = json.loads((carry / HEADER_FILE).read_text())
    shape = [int(v) for v in header["shape"]]
    size = int(np.prod(shape))
    if header.get("dtype") != "uint8" or len(shape) != 4 or shape[1] != 3 or not 0 < size <= MAX_RAW_BYTES:
        raise ValueError(f"{carry / HEADER_FILE}: expected a uint8 (N, 3, R, R) array of at most "
                         f"{MAX_RAW_BYTES} bytes, got {header.get('dtype')} {shape}")
    decompressor = lzma.LZMADecompressor()
    raw = decompressor.decompress((carry / ARRAY_FILE).read_bytes(), max_length=size + 1)
    if len(raw) != size or not decompressor.eof:
        raise ValueError(f"{carry / ARRAY_FILE}: does not hold exactly {size} bytes")
    if hashlib.sha256(raw).hexdigest() != header["sha256"]:
        raise ValueError(f"{carry / ARRAY_FILE}: sha256 differs from {carry / HEADER_FILE}")
    images = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).reshape(shape).copy())
    save_pngs(images, images_dir)
    return header
