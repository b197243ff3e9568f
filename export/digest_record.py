"""Which files of an export already matched their manifest sha256, so that a restart need not hash them again.

Hashing ViT-B-32's 605 MB of graphs took 0.4-0.8 s of every server start (docs/benchmarks/README.md, "Lean
serving"). After a file hashes to its manifest digest, its identity and times are written down (device, inode,
size, mtime and ctime in ns); a later load skips the hash while all of them are unchanged. Rewriting a file
changes its mtime and ctime; putting the mtime back (`touch -d`, `cp -p`) still changes the ctime, which no
program can set; a copied or swapped file is another inode. What is given up: bytes changed with none of those
(failing storage, writes to the raw device). The manifest's digests guard against incomplete copies and swapped or
edited graphs, not against storage faults or against someone who can write the export directory and its cache.
A file changed within SETTLE_NS of being hashed could keep the same coarse timestamps (Linux stamps files with a
clock that ticks every few ms, FAT every 2 s), so such a file is not recorded: the next load hashes it again.

The record is a small JSON file in the export's cache directory; where that cannot be written (a read-only
volume) every load hashes, as before.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from export.cache_files import write_atomic

log = logging.getLogger(__name__)

RECORD_FILE = "verified.json"
SETTLE_NS = 2_000_000_000  # a file's ctime must be this much older than its hash to be recorded


def identity(stat: os.stat_result) -> dict[str, int]:
    """What changes when a file's bytes can have changed: a rewrite, a restored mtime, a copy or a swap."""
    return {"dev": stat.st_dev, "ino": stat.st_ino, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "ctime_ns": stat.st_ctime_ns}


class DigestRecord:
    """{file name: identity + sha256} of the files that matched; `path` None keeps nothing (every file hashed)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, dict] = self._read() if path else {}
        self.changed = False

    def matches(self, name: str, stat: os.stat_result, sha256: str) -> bool:
        """The file is as it was when it last hashed to `sha256`."""
        return self.entries.get(name) == {**identity(stat), "sha256": sha256}

    def remember(self, name: str, stat: os.stat_result, sha256: str) -> None:
        """`stat` taken before hashing: a file written while it was hashed no longer matches it afterwards."""
        if time.time_ns() - stat.st_ctime_ns < SETTLE_NS:
            return
        entry = {**identity(stat), "sha256": sha256}
        if self.entries.get(name) != entry:
            self.entries[name], self.changed = entry, True

    def save(self) -> None:
        if not (self.path and self.changed):
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(self.entries, indent=1, sort_keys=True).encode())
        except OSError as e:  # a read-only export volume: hash on every start, as without a record
            log.info("cannot record verified graph digests in %s (%s): each start hashes the graphs", self.path, e)
        self.changed = False

    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))  # type: ignore[union-attr]
        except (OSError, ValueError):  # none yet, or damaged: hash everything and write a new one
            return {}
        return data if isinstance(data, dict) else {}
