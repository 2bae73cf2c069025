"""Ingest's decoding work: raw file bytes -> square frames as PNG bytes with their manifest statistics,
in this process or in a pool of worker processes.

Workers are started with "spawn", not "fork": the caller may have torch (and its thread pools)
loaded, and this module imports only Pillow/numpy and the typed config (pydantic), so a worker starts
in a fraction of a second. Workers get the DataConfig section itself (data.*).
Tasks are submitted in a bounded window, so a large source is streamed rather than queued whole, and
every result carries its task index: the caller sorts, so the order of completion never matters.
Batches and the window are bounded in bytes as well as in files: 16 files of 60 MB each must not
sit in memory at once (nor be copied to a worker as one pickle).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context

import numpy as np
from tqdm import tqdm

from pokediff.config import DataConfig
from pokediff.data.decode import decode_frames, to_square_frames
from pokediff.data.manifest import pixel_stats
from pokediff.data.raster import BadImageError
from pokediff.errors import PokediffError
from pokediff.pixels import encode_png

# Files per task sent to a worker process, and tasks in flight per worker (bounds memory: the
# source is streamed, not loaded whole).
_BATCH_FILES = 16
_BATCH_BYTES = 16 * 1024 * 1024  # a batch closes at this many raw bytes (a bigger file goes alone)
_TASKS_IN_FLIGHT_PER_WORKER = 4
_BYTES_IN_FLIGHT_PER_WORKER = 2 * _BATCH_BYTES
_SHOWN_NAMES = 5

Task = tuple[int, str, "bytes | OSError"]  # (index, extension, file bytes or the read error)


class WorkerCrashedError(PokediffError, RuntimeError):
    """A worker process died (native crash, out of memory); the message names the files it held."""


@dataclass(frozen=True)
class EncodedFrame:
    frame: int
    n_frames: int
    width: int
    height: int
    png: bytes
    mean: float
    std: float
    background_fraction: float
    sha256: str


@dataclass(frozen=True)
class FileOutcome:
    index: int  # position in the candidate list
    frames: tuple[EncodedFrame, ...] = ()
    error: str | None = None


_worker_settings: DataConfig | None = None


def _init_worker(settings: DataConfig) -> None:
    global _worker_settings
    _worker_settings = settings


def process_file(data: bytes, extension: str, settings: DataConfig) -> tuple[EncodedFrame, ...]:
    """Raw bytes of one file -> its encoded square frames. Raises BadImageError."""
    frames = decode_frames(
        data,
        extension,
        frames_per_animation=settings.frames_per_gif,
        max_pixels=settings.max_pixels,
        resolution=settings.resolution,
    )
    squares = to_square_frames(frames, settings.resolution, settings.background, settings.max_pixels)
    encoded = []
    for frame, square in zip(frames, squares, strict=True):
        stats = pixel_stats(np.asarray(square), settings.background)
        encoded.append(
            EncodedFrame(
                frame.index, frame.n_frames, square.width, square.height, encode_png(square),
                stats.mean, stats.std, stats.background_fraction, stats.sha256,
            )
        )
    return tuple(encoded)


def _process_batch(batch: list[Task]) -> list[FileOutcome]:
    assert _worker_settings is not None, "worker not initialised"
    outcomes = []
    for index, extension, data in batch:
        if isinstance(data, OSError):
            outcomes.append(FileOutcome(index, error=f"cannot read file: {data}"))
            continue
        try:
            outcomes.append(FileOutcome(index, process_file(data, extension, _worker_settings)))
        except BadImageError as exc:
            outcomes.append(FileOutcome(index, error=str(exc)))
    return outcomes


def _task_bytes(task: Task) -> int:
    return len(task[2]) if isinstance(task[2], bytes) else 0


def _batches(tasks: Iterator[Task]) -> Iterator[list[Task]]:
    """Up to _BATCH_FILES tasks and, past the first, _BATCH_BYTES of file bytes per batch."""
    batch: list[Task] = []
    size = 0
    for task in tasks:
        if batch and (len(batch) == _BATCH_FILES or size + _task_bytes(task) > _BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(task)
        size += _task_bytes(task)
    if batch:
        yield batch


def decode_all(
    tasks: Iterator[Task], settings: DataConfig, bar: tqdm, names: list[str]
) -> list[FileOutcome]:
    """Run `_process_batch` over all tasks, serially or in a bounded process pool.

    `names[i]` is task i's source path, for the message when a worker dies.
    """
    outcomes: list[FileOutcome] = []
    workers = settings.num_workers or default_num_workers()  # data.num_workers: 0 = one per CPU
    if workers == 1:
        _init_worker(settings)
        for batch in _batches(tasks):
            outcomes += _process_batch(batch)
            bar.update(len(batch))
        return outcomes
    # spawn and a bounded window: see the module docstring.
    pending: dict[Future, list[str]] = {}
    pending_bytes: dict[Future, int] = {}
    limit = workers * _TASKS_IN_FLIGHT_PER_WORKER
    byte_limit = workers * _BYTES_IN_FLIGHT_PER_WORKER

    def collect(done: Iterable[Future]) -> None:
        for future in done:
            names = pending.pop(future)
            pending_bytes.pop(future)
            try:
                result = future.result()
            except BrokenProcessPool:
                shown = ", ".join(names[:_SHOWN_NAMES]) + (", ..." if len(names) > _SHOWN_NAMES else "")
                raise WorkerCrashedError(
                    f"a worker process died while decoding one of {len(names)} files: {shown}. Causes: a "
                    "native decoder crash or out of memory (rerun with data.num_workers=1 to find the "
                    "file), or a script calling ingest() without an `if __name__ == '__main__':` guard"
                ) from None
            outcomes.extend(result)
            bar.update(len(result))

    with ProcessPoolExecutor(
        workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(settings,)
    ) as pool:
        for batch in _batches(tasks):
            future = pool.submit(_process_batch, batch)
            pending[future] = [names[index] for index, _, _ in batch]
            pending_bytes[future] = sum(map(_task_bytes, batch))
            del batch  # the pool holds its own pickled copy until the task is done
            while pending and (len(pending) >= limit or sum(pending_bytes.values()) > byte_limit):
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                collect(done)
        collect(list(pending))
    return outcomes


_MAX_DEFAULT_WORKERS = 8  # beyond this, starting the processes costs more than a sprite set saves


def default_num_workers() -> int:
    """One worker per CPU this process may use, at most 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cpus, _MAX_DEFAULT_WORKERS))
