"""glibc's heap while ONNX Runtime builds sessions: large freed blocks go back to the system at once.

ONNX Runtime builds a session from buffers it frees again (the parsed graph's weights once MLAS has pre-packed
its GEMM copies, the originals of folded constants). glibc serves blocks of 128 KiB and more with mmap, which
returns them on free, but it raises that threshold to the size of every such block freed (up to 32 MiB), so the
later weight-sized buffers come from the heap instead, and freeing them leaves the memory resident: on ViT-B-32
(fp32) the image session kept 224 MiB it had freed, and the two sessions peaked at 829 MiB against 741 MiB with
the threshold held at 128 KiB (docs/benchmarks/README.md, "Lean serving").

Held there for good, every block of 128 KiB or more would be a fresh mapping, page-faulted in: a 3 MB buffer
(one decoded photo) cost 3 ms instead of 0.3 ms to allocate and fill on the 2-core test machine. So the threshold
is fixed only while sessions are built; afterwards it stays at 32 MiB, where glibc's own adjustment ends, with the
heap top trimmed beyond 64 MiB (twice that, as glibc pairs them), so serving reuses heap memory as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h); setting either stops glibc adjusting
WHILE_LOADING = 128 * 1024  # glibc's starting mmap threshold
AFTER_LOADING = 32 * 1024 * 1024  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: where glibc's adjustment stops
TRIM_AFTER_LOADING = 2 * AFTER_LOADING


def _mallopt() -> Optional[Callable[[int, int], int]]:
    """glibc's mallopt, or None (musl, macOS: no dynamic threshold to fix)."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt


@contextmanager
def large_frees_returned() -> Iterator[bool]:
    """Within: blocks of 128 KiB or more are mapped on their own and unmapped when freed. Yields whether glibc
    took the setting (False elsewhere: nothing changes)."""
    mallopt = _mallopt()
    fixed = mallopt is not None and mallopt(M_MMAP_THRESHOLD, WHILE_LOADING) == 1
    if not fixed:
        log.debug("mallopt unavailable or refused: freed session buffers may stay resident")
    try:
        yield fixed
    finally:
        if fixed:
            mallopt(M_MMAP_THRESHOLD, AFTER_LOADING)
            mallopt(M_TRIM_THRESHOLD, TRIM_AFTER_LOADING)
