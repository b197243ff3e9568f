"""Files in a cache that several processes share (replicas on one volume): whole-file writes and a build lock.

A replica that reads an engine while another writes it must see the old file or the new one, never half of one
(a truncated engine fails to deserialize and the replica restart-loops); and only one replica should spend
minutes building what all of them will load. `write_atomic` writes beside the target and renames over it
(rename is atomic within a filesystem, NFS included); `exclusive_lock` is an flock on a file in the cache
directory, which Linux maps to POSIX locks on NFS, so it holds across hosts sharing a ReadWriteMany volume.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

LOCK_FILE = ".build.lock"


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` in one step: readers see the previous content or all of the new one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the bytes reach the disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def exclusive_lock(directory: Path, what: str = "a build") -> Iterator[None]:
    """Hold <directory>/.build.lock exclusively: one process at a time, across processes and hosts."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_FILE, "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process to finish %s in %s", what, directory)
            start = time.monotonic()
            fcntl.flock(f, fcntl.LOCK_EX)
            log.info("lock on %s acquired after %.0f s", directory, time.monotonic() - start)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
