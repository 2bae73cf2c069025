"""Process-wide defaults: no telemetry, no hub downloads. Set by the project, never asked of the user."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

OFFLINE_DEFAULTS = {
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


# OpenMP threads that find no work sleep instead of spinning. With spinning (libgomp's default), a
# process with 2 intra-op threads on a 2-core machine that is also running anything else spends its
# share waiting for a descheduled sibling: the main job's training step measured 0.7 img/s with 2
# threads against 2.8 with 1, and two such processes 0.5 + 0.5 img/s. With PASSIVE: 3.0, and 2.0 + 2.1
# (benchmarks/cpu_threads.py; RESULTS.md, "CPU threads"). libgomp reads it when torch is loaded, so it
# is set before any torch import (cli.main); OMP_WAIT_POLICY=ACTIVE in the environment restores spinning.
CPU_THREAD_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def set_cpu_thread_defaults() -> None:
    """Set CPU_THREAD_DEFAULTS unless the user chose a value; effective only before torch is imported."""
    for key, value in CPU_THREAD_DEFAULTS.items():
        os.environ.setdefault(key, value)


def set_offline_defaults() -> None:
    """Set the telemetry/offline switches unless the user already chose a value."""
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)


def tune_cpu_allocator() -> bool:
    """Keep freed tensor memory in the process instead of returning it to the OS at every free.

    glibc serves large blocks with mmap and unmaps them on free, so every CPU forward pass pays page
    faults for its activations again: measured 3x slower U-Net inference at batch 100 on 2 cores
    (43 -> 124 images/s) and high system time. Raising the mmap and trim thresholds (the same as
    MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_) stops that. No-op off glibc. Returns success."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
        ok_mmap = libc.mallopt(m_mmap_threshold, 1 << 30)
        ok_trim = libc.mallopt(m_trim_threshold, 1 << 30)
        return bool(ok_mmap and ok_trim)
    except (OSError, AttributeError):
        return False
