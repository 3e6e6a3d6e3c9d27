"""Keep a long-running worker's memory flat from one call to the next.

The speech models free their tensors after every piece of audio, but glibc keeps freed
memory in its per-thread heaps (arenas) instead of handing it back, so a worker that has
served a few dozen calls holds the high-water mark of every thread that ever ran a model.
After each call the worker collects Python garbage and asks glibc to return free pages
(``malloc_trim``). Elsewhere (musl, macOS) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import time
from typing import Any

import psutil

logger = logging.getLogger("worker.memory")


def _load_trim() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


_malloc_trim = _load_trim()


def rss_mb() -> float:
    """This process's resident memory in MB."""
    return float(psutil.Process().memory_info().rss) / 2**20


def release() -> None:
    """Collect garbage and return free heap pages to the OS (blocking: run it off the loop)."""
    start = time.perf_counter()
    before = rss_mb()
    gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)
    logger.debug(
        "memory released after call: %.0f -> %.0f MB in %.0f ms",
        before, rss_mb(), (time.perf_counter() - start) * 1000,
    )  # fmt: skip
