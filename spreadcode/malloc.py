"""glibc malloc thresholds for the processes that encode and search.

Encoding and re-ranking allocate and free tens of MB of buffers per batch (torch
activations, decoded candidates). At glibc's defaults each buffer above the mmap threshold
(128 KiB, raised dynamically up to 32 MiB only after such buffers are freed) is a fresh
mmap, page-faulted anew for every batch; Dask starts its workers with
MALLOC_TRIM_THRESHOLD_=65536, which freezes that threshold at 128 KiB. `raise_thresholds`
sets both thresholds once per process so the buffers are reused from the heap, keeping up
to `TRIM_THRESHOLD` of free memory at the top of each arena:
- a Dask worker encoded at 5.6k vec/s where a plain process reached 8.5k; under Dask's
  setting with these, 9.1k, and 2 workers at 1M vectors as fast as one 2-thread process
  (BENCHMARKS.md, "Collections at 1M vectors", runs E-G);
- a process that had not yet decoded much (a Dask client re-ranking its first searches)
  re-ranked 1,000 queries over 1M codes in 1.2-1.6 s instead of 0.8-0.9 (run Z).

Every Dask worker sets them before its first spreadcode task (`spreadcode.distributed`), and
the CLI for its own process; a Python program calls `raise_thresholds` if it wants the same.
"""
from __future__ import annotations

import ctypes
import threading

MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 64 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (glibc malloc.h)

_LOCK = threading.Lock()
thresholds_set = None  # whether `raise_thresholds` set them in this process (None: not asked)


def raise_thresholds():
    """Once per process: glibc's mmap and trim thresholds set to `MMAP_THRESHOLD` and
    `TRIM_THRESHOLD` (no-op without glibc's mallopt). Returns whether they are set."""
    global thresholds_set
    with _LOCK:
        if thresholds_set is None:
            try:
                mallopt = ctypes.CDLL(None).mallopt
            except (AttributeError, OSError, TypeError):
                thresholds_set = False
            else:
                mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
                thresholds_set = all([mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                                      mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)])
        return thresholds_set
