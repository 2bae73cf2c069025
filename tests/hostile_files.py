"""Small files that declare or contain far more than they weigh, built byte by byte for the trust tests
(import as ``from hostile_files import ...``; tests/ is on sys.path). Nothing large is ever written:
gigabytes of zeros are one deflated megabyte repeated (a full flush makes the copies independent).

Also `run_measured`: run Python code in a fresh interpreter and get its result, its peak RSS and
its time, so a test can hold a loader to a memory bound as a real process.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# Compression and containers
# ----------------------------------------------------------------------------------------------
def zeros_deflate(mib: int, flush_first: bytes = b"") -> bytes:
    """Raw deflate data of `flush_first` + `mib` MiB of zero bytes, about 1 KB per MiB."""
    head = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = head.compress(flush_first) + head.flush(zlib.Z_FULL_FLUSH) if flush_first else b""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = packer.compress(b"\0" * (1 << 20)) + packer.flush(zlib.Z_FULL_FLUSH)
    return first + block * mib + zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)


def hand_zip(entries: list[tuple[str, int, bytes, int]]) -> bytes:
    """A zip of (name, method, data as stored, declared uncompressed size) entries, written by hand so
    that an entry may declare any size (CRCs are 0: the readers under test must refuse before checking)."""
    body, directory = b"", b""
    for name, method, data, size in entries:
        encoded = name.encode()
        crc = zlib.crc32(data) if method == zipfile.ZIP_STORED else 0
        fields = struct.pack("<HHHHHIIIHH", 20, 0, method, 0, 0, crc, len(data), size, len(encoded), 0)
        offset = len(body)
        body += b"PK\x03\x04" + fields + encoded + data
        directory += (b"PK\x01\x02" + struct.pack("<H", 20) + fields + struct.pack("<HHHII", 0, 0, 0, 0, offset)
                      + encoded)
    count = len(entries)
    return body + directory + b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, count, count, len(directory), len(body), 0)


def zip_listing_many(entries: int) -> bytes:
    """A zip whose central directory lists `entries` names (12 bytes each), all pointing at one stored
    one-byte file: 58 bytes of directory per entry, ~400 bytes of Python objects each in zipfile."""
    local = b"PK\x03\x04" + struct.pack("<HHHHHIIIHH", 20, 0, 0, 0, 0, zlib.crc32(b"x"), 1, 1, 5, 0) + b"a.png" + b"x"
    records = []
    for i in range(entries):
        name = b"%08d.png" % i
        records.append(b"PK\x01\x02" + struct.pack("<HHHHHHIIIHHHHHII", 20, 20, 0, 0, 0, 0, zlib.crc32(b"x"), 1, 1,
                                                  len(name), 0, 0, 0, 0, 0, 0) + name)
    directory = b"".join(records)
    count = min(entries, 0xFFFF)
    return local + directory + b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, count, count, len(directory),
                                                            len(local), 0)


def tar_gz_with_header_record(kind: bytes, mib: int, then: dict[str, bytes]) -> bytes:
    """A .tar.gz whose first record is a `kind` header (b"x": pax, b"L": GNU long name) declaring `mib`
    MiB of zeros (1.5 MB of file per GB), followed by ordinary members `then`."""
    def header(name: str, size: int, member_kind: bytes) -> bytes:
        info = tarfile.TarInfo(name)
        info.size, info.type = size, member_kind
        return info.tobuf(format=tarfile.GNU_FORMAT)

    tail = b""
    for name, data in then.items():
        tail += header(name, len(data), tarfile.REGTYPE) + data + b"\0" * (-len(data) % 512)
    tail += b"\0" * 1024
    first = header("h", mib << 20, kind)
    crc, size = zlib.crc32(first), len(first)
    zeros = b"\0" * (1 << 20)
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
    crc, size = zlib.crc32(tail, crc), size + (mib << 20) + len(tail)
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = zeros_deflate(mib, flush_first=first)[:-2]  # open the stream again for the tail
    deflated = deflated + packer.compress(tail) + packer.flush(zlib.Z_FINISH)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + deflated + struct.pack("<II", crc & 0xFFFFFFFF,
                                                                                 size & 0xFFFFFFFF)


# ----------------------------------------------------------------------------------------------
# Images whose decoding walks far more than the file holds
# ----------------------------------------------------------------------------------------------
def jpeg_with_scans(scans: int, size: int = 2000) -> bytes:
    """A progressive JPEG whose smallest scan is repeated: each scan is ~13 bytes of file and a pass of
    the decoder over all size x size pixels (50,000 scans: 36 s on main)."""
    from PIL import Image

    image = Image.new("RGB", (size, size), (200, 30, 40))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    segments, pos = [], 2
    while data[pos + 1] != 0xD9:
        end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if data[pos + 1] == 0xDA:  # a scan: its entropy-coded data runs to the next marker
            while not (data[end] == 0xFF and data[end + 1] != 0 and not 0xD0 <= data[end + 1] <= 0xD7):
                end += 1
        segments.append(data[pos:end])
        pos = end
    smallest = min((s for s in segments if s[1] == 0xDA), key=len)
    count = sum(1 for s in segments if s[1] == 0xDA)
    return b"\xff\xd8" + b"".join(segments) + smallest * (scans - count) + b"\xff\xd9"


def gif_with_frames(frames: int, size: int) -> bytes:
    """A GIF with a size x size screen and `frames` one-pixel frames (20 bytes each); Pillow composes
    every frame onto the whole canvas on its way to a later one."""
    head = b"GIF89a" + struct.pack("<HHBBB", size, size, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    control = b"\x21\xf9\x04\x00\x01\x00\x00\x00"
    frame = control + b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return head + frame * frames + b"\x3b"


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def apng_with_frames(frames: int, size: int) -> bytes:
    """An animated PNG: a size x size first frame, then `frames` - 1 one-pixel frames (fcTL + fdAT)."""
    rows = zlib.compress(b"".join(b"\0" + b"\x10\x20\x30" * size for _ in range(size)), 9)
    pixel = zlib.compress(b"\0\x10\x20\x30")
    out = [b"\x89PNG\r\n\x1a\n", _png_chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)),
           _png_chunk(b"acTL", struct.pack(">II", frames, 0)),
           _png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", 0, size, size, 0, 0, 1, 100, 0, 0)),
           _png_chunk(b"IDAT", rows)]
    sequence = 1
    for _ in range(frames - 1):
        out.append(_png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", sequence, 1, 1, 0, 0, 1, 100, 0, 0)))
        out.append(_png_chunk(b"fdAT", struct.pack(">I", sequence + 1) + pixel))
        sequence += 2
    return b"".join(out) + _png_chunk(b"IEND", b"")


def webp_with_frames(frames: int, size: int) -> bytes:
    """An animated WebP: a size x size canvas and `frames` one-pixel lossless frames (ANMF chunks)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (1, 1), (10, 20, 30)).save(buffer, "WEBP", lossless=True)
    bitstream = buffer.getvalue()[12:]  # the VP8L chunk
    body = b"\0" * 12 + (10).to_bytes(3, "little") + b"\x02" + bitstream  # x, y, w-1, h-1; duration; flags
    frame = b"ANMF" + struct.pack("<I", len(body)) + body + b"\0" * (len(body) & 1)
    canvas = b"VP8X" + struct.pack("<I", 10) + bytes([0x02, 0, 0, 0]) + (size - 1).to_bytes(3, "little") * 2
    animation = b"ANIM" + struct.pack("<I", 6) + b"\xff\xff\xff\xff\x00\x00"
    payload = b"WEBP" + canvas + animation + frame * frames
    return b"RIFF" + struct.pack("<I", len(payload)) + payload


# ----------------------------------------------------------------------------------------------
# Model, checkpoint and statistics files
# ----------------------------------------------------------------------------------------------
def checkpoint_declaring(mib: int, config: dict | None = None, deflated: bool = True) -> bytes:
    """A pokediff training checkpoint (format tag, step, optional config, one 3-element weight) whose
    weight's storage is a deflated record of `mib` MiB of zeros, the pickle's element count raised to
    match: 1 MB of file per GB that torch.load allocates. deflated=False: every entry stored, the
    storage record still its 12 real bytes (a pickle that lies about its record's size)."""
    import torch

    payload = {"format": "pokediff-checkpoint-v2", "step": 1, "model": {"w": torch.zeros(3)}}
    if config is not None:
        payload["config"] = config
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    original = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    entries = []
    for info in original.infolist():
        data = original.read(info)
        if info.filename.endswith("/data.pkl"):  # the storage id ends "..., 'cpu', 3)": BININT1 3, TUPLE
            assert data.count(b"K\x03t") == 1, "the pickle's storage size is not where it was"
            data = data.replace(b"K\x03t", b"J" + struct.pack("<i", (mib << 20) // 4) + b"t")
            entries.append((info.filename, zipfile.ZIP_STORED, data, len(data)))
        elif info.filename.endswith("/data/0") and deflated:
            entries.append((info.filename, zipfile.ZIP_DEFLATED, zeros_deflate(mib), mib << 20))
        else:
            entries.append((info.filename, zipfile.ZIP_STORED, data, len(data)))
    return hand_zip(entries)


def npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    text = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape!r}, }}"
    text += " " * (-(10 + len(text) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode()


def stats_declaring(mib: int, deflated: bool = True) -> bytes:
    """A reference-stats .npz whose `features` member declares (N, 2048) float32 = `mib` MiB: deflated
    zeros (3 MB of file for 3.5 GB), or stored with only the header (deflated=False: a member that
    lies about its size)."""
    import numpy as np

    n = (mib << 20) // (2048 * 4)
    small = {"mu": np.zeros(2048), "n": np.int64(n), "content_hash": np.str_("0" * 64),
             "extractor": np.str_("inception-2015-12-05/pool3/tf1"), "train_nn": np.zeros(4),
             "paths": np.array([""] * 4)}
    entries = []
    for name, array in small.items():
        buffer = io.BytesIO()
        np.save(buffer, array)
        entries.append((f"{name}.npy", zipfile.ZIP_STORED, buffer.getvalue(), len(buffer.getvalue())))
    header = npy_header("<f4", (n, 2048))
    if deflated:
        entries.append(("features.npy", zipfile.ZIP_DEFLATED, zeros_deflate(mib, flush_first=header),
                        len(header) + (mib << 20)))
    else:
        entries.append(("features.npy", zipfile.ZIP_STORED, header, len(header)))
    return hand_zip(entries)


def model_file_with_config(path: Path, change) -> Path:
    """A real model file of the tiny U-Net whose metadata config is then rewritten by change(config
    dict) -> dict or str (the header keeps every tensor where it was)."""
    import torch

    from helpers import tiny_model_config
    from pokediff.checkpoint import save_model_file
    from pokediff.config import DiffusionConfig
    from pokediff.models import UNet

    cfg = tiny_model_config()
    torch.manual_seed(0)
    save_model_file(path, UNet(cfg).state_dict(), None, cfg, DiffusionConfig(), 1)
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    config = change(json.loads(header["__metadata__"]["config"]))
    header["__metadata__"]["config"] = config if isinstance(config, str) else json.dumps(config)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + length:])
    return path


# ----------------------------------------------------------------------------------------------
# Real processes, measured
# ----------------------------------------------------------------------------------------------
def run_cli_measured(argv: list[str], timeout: float = 600) -> dict:
    """`pokediff ARGV...` (cli.main) in a fresh interpreter, measured by `run_measured`: its exit
    'code', its 'stderr' text, 'peak_rss_mb' and 'seconds'."""
    return run_measured(
        "import contextlib, io\nfrom pokediff.cli import main\nerr = io.StringIO()\n"
        f"with contextlib.redirect_stderr(err):\n    code = main({argv!r})\n"
        "result = {'code': code, 'stderr': err.getvalue()}\n", timeout)


def run_measured(code: str, timeout: float = 600) -> dict:
    """Run `code` (which sets `result`, a JSON-able dict) in a fresh interpreter with this checkout's
    pokediff; its result plus 'peak_rss_mb' (VmHWM: ru_maxrss would carry over from this process)
    and 'seconds'. The child's stderr must be empty of tracebacks."""
    script = (
        "import json\n" + code +
        "\nhwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
        "result['peak_rss_mb'] = int(hwm.split()[1]) / 1024\n"
        "print(json.dumps(result))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO), str(REPO / "tests")]))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=timeout)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["seconds"] = time.perf_counter() - started
    return result
