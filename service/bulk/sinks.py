"""Where `clip-serve embed` writes: resumable outputs that are readable after every committed group.

A parquet file's footer is written only when it closes, so one growing `vectors.parquet` file would be unreadable
(and its rows lost) after a crash. Instead `--out vectors.parquet` is a *directory* of part files, one per group
of rows, each written to a hidden temporary name and renamed into place when complete:

    vectors.parquet/part-000000.parquet, part-000001.parquet, ...   read with pq.read_table("vectors.parquet")

Readers (pyarrow, pandas, Spark, DuckDB) treat such a directory as one table and ignore hidden files. Columns:
source (string), model (string), fingerprint (string), embedding (fixed_size_list<float32>[D]).

`--format npy` writes `vectors.npy` (float32 [N, D]) and `vectors.index.csv` (row, source, model, fingerprint;
line i describes matrix row i). The .npy header is fixed-length and rewritten last in each commit, so it is the
commit point: on resume, index rows and matrix bytes past it (a group cut off by a crash) are dropped.

Both know which sources they hold (skipped on a rerun) and their fingerprint (a rerun against a server with
another one must stop).
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol

import numpy as np

PART = re.compile(r"^part-(\d{6,})\.parquet$")
INDEX_FIELDS = ["row", "source", "model", "fingerprint"]
NPY_HEADER_BYTES = 128  # magic (6) + version (2) + length (2) + the dict, space-padded: room for any shape


class OutputError(RuntimeError):
    """The output cannot be written or resumed (not ours, mixed fingerprints, another embedding size)."""


@dataclass
class Rows:
    """One group of embedded items, all from one model."""

    sources: list[str]
    vectors: np.ndarray  # float32 [N, D]
    model: str
    fingerprint: str


class Sink(Protocol):
    done: set[str]  # sources already written
    fingerprint: Optional[str]  # of what is written; None while empty
    model: Optional[str]

    def write(self, rows: Rows) -> None: ...

    def close(self) -> None: ...


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _single(values: set[str], what: str, where: Path) -> Optional[str]:
    if len(values) > 1:
        raise OutputError(f"{where} holds rows of several {what}s ({', '.join(sorted(values))}); "
                          f"embeddings of different models must not be mixed: write each to its own --out")
    return next(iter(values), None)


class ParquetSink:
    """A directory of parquet part files, one row group each; see the module docstring."""

    def __init__(self, path: Path):
        import pyarrow.parquet as pq  # here, so --format npy works without pyarrow

        self.pq, self.path = pq, path
        if path.exists() and not path.is_dir():
            raise OutputError(f"{path} exists and is a file; clip-serve embed writes a directory of parquet parts "
                              f"there: choose another --out")
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob(".part-*.tmp"):  # a part cut off by a crash: never renamed, never read
            stale.unlink()
        names = sorted(p.name for p in path.iterdir() if not p.name.startswith((".", "_")))
        foreign = [n for n in names if not PART.match(n)]
        if foreign:
            raise OutputError(f"{path} holds files clip-serve embed did not write ({', '.join(foreign[:3])}); "
                              f"choose another --out")
        self.next_part = max((int(PART.match(n).group(1)) + 1 for n in names), default=0)  # type: ignore[union-attr]
        self.done: set[str] = set()
        self.fingerprint = self.model = None
        self.dimensions: Optional[int] = None
        if names:
            self._load()

    def _load(self) -> None:
        table = self.pq.read_table(self.path, columns=["source", "model", "fingerprint"])
        self.done = set(table.column("source").to_pylist())
        self.fingerprint = _single(set(table.column("fingerprint").unique().to_pylist()), "fingerprint", self.path)
        self.model = _single(set(table.column("model").unique().to_pylist()), "model", self.path)
        self.dimensions = self.pq.read_schema(self.path / f"part-{self.next_part - 1:06d}.parquet") \
            .field("embedding").type.list_size

    def write(self, rows: Rows) -> None:
        import pyarrow as pa

        n, d = rows.vectors.shape
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(rows.vectors.astype(np.float32, copy=False).ravel()), d)
        table = pa.table({"source": pa.array(rows.sources, pa.string()),
                          "model": pa.array([rows.model] * n, pa.string()),
                          "fingerprint": pa.array([rows.fingerprint] * n, pa.string()),
                          "embedding": vectors})
        name = f"part-{self.next_part:06d}.parquet"
        tmp = self.path / f".{name}.tmp"
        with open(tmp, "wb") as f:
            self.pq.write_table(table, f, row_group_size=n)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path / name)  # atomic: a reader sees the whole part or none of it
        fsync_dir(self.path)
        self.next_part += 1
        self.done.update(rows.sources)
        self.fingerprint, self.model, self.dimensions = rows.fingerprint, rows.model, d

    def close(self) -> None:
        pass


def npy_header(n: int, d: int) -> bytes:
    """A version 1.0 .npy header for float32 [n, d], padded to NPY_HEADER_BYTES so it can be rewritten in place."""
    text = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (n, d)
    body = text.ljust(NPY_HEADER_BYTES - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body.encode("latin1")


def read_npy_shape(path: Path) -> tuple[int, int]:
    with open(path, "rb") as f:
        try:
            if np.lib.format.read_magic(f) != (1, 0):
                raise ValueError("not a version 1.0 header")
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        except ValueError as exc:
            raise OutputError(f"{path} is not a .npy file: {exc}") from exc
        if f.tell() != NPY_HEADER_BYTES or dtype != np.float32 or fortran or len(shape) != 2:
            raise OutputError(f"{path} was not written by clip-serve embed (float32 [N, D], {NPY_HEADER_BYTES}-byte "
                              f"header); choose another --out")
    return shape


class NpySink:
    """`vectors.npy` + `vectors.index.csv`; see the module docstring."""

    def __init__(self, path: Path):
        self.path, self.index_path = path, path.with_suffix(".index.csv")
        self.n, self.dimensions = 0, None
        self.done: set[str] = set()
        self.fingerprint = self.model = None
        self._npy: Optional[io.BufferedRandom] = None
        self._index: Optional[io.TextIOWrapper] = None
        if path.exists():
            self._resume()
        elif self.index_path.exists():
            self.index_path.unlink()  # index rows past a header that was never written were never committed

    def _resume(self) -> None:
        self.n, self.dimensions = read_npy_shape(self.path)
        if not self.index_path.is_file():
            raise OutputError(f"{self.path} has no {self.index_path.name} beside it, so it was not written by "
                              f"clip-serve embed (or its index was moved); choose another --out")
        with open(self.index_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if len(rows) < self.n or any(r.get("row") != str(i) for i, r in enumerate(rows[:self.n])):
            raise OutputError(f"{self.index_path} does not match {self.path} ({len(rows)} index rows for {self.n} "
                              f"vectors); choose another --out")
        rows = rows[:self.n]  # the commit point: the header's row count
        self.done = {r["source"] for r in rows}
        self.fingerprint = _single({r["fingerprint"] for r in rows}, "fingerprint", self.index_path)
        self.model = _single({r["model"] for r in rows}, "model", self.index_path)
        with open(self.index_path, "w", newline="", encoding="utf-8") as f:  # drop an uncommitted tail
            writer = csv.DictWriter(f, INDEX_FIELDS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        with open(self.path, "r+b") as f:
            f.truncate(NPY_HEADER_BYTES + self.n * self.dimensions * 4)

    def _open(self, d: int) -> None:
        if self.dimensions is not None and d != self.dimensions:
            raise OutputError(f"{self.path} holds {self.dimensions}-d vectors, the server returns {d}-d")
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_bytes(npy_header(0, d))
            with open(self.index_path, "w", newline="", encoding="utf-8") as f:
                csv.writer(f, lineterminator="\n").writerow(INDEX_FIELDS)
        self.dimensions = d
        self._npy = open(self.path, "r+b")
        self._index = open(self.index_path, "a", newline="", encoding="utf-8")

    def write(self, rows: Rows) -> None:
        n, d = rows.vectors.shape
        if self._npy is None:
            self._open(d)
        assert self._npy is not None and self._index is not None
        self._npy.seek(NPY_HEADER_BYTES + self.n * d * 4)
        self._npy.write(np.ascontiguousarray(rows.vectors, dtype="<f4").tobytes())
        self._npy.flush()
        os.fsync(self._npy.fileno())
        csv.writer(self._index, lineterminator="\n").writerows(
            [self.n + i, s, rows.model, rows.fingerprint] for i, s in enumerate(rows.sources))
        self._index.flush()
        os.fsync(self._index.fileno())
        self._npy.seek(0)  # the commit: the header's row count now includes this group
        self._npy.write(npy_header(self.n + n, d))
        self._npy.flush()
        os.fsync(self._npy.fileno())
        self.n += n
        self.done.update(rows.sources)
        self.fingerprint, self.model = rows.fingerprint, rows.model

    def close(self) -> None:
        for f in (self._npy, self._index):
            if f is not None:
                f.close()
        self._npy = self._index = None


class ErrorLog:
    """`<out>.errors.csv`: source, status, type, message of each item that failed, in this run. Failed items are not
    done: a rerun tries them again (and rewrites this file). Written only when something fails."""

    FIELDS = ["source", "status", "type", "message"]

    def __init__(self, path: Path):
        self.path, self.count = path, 0
        self._file: Optional[io.TextIOWrapper] = None
        if path.exists():
            path.unlink()

    def record(self, source: str, status: Optional[int], type_: str, message: str) -> None:
        if self._file is None:
            self._file = open(self.path, "w", newline="", encoding="utf-8")
            csv.writer(self._file, lineterminator="\n").writerow(self.FIELDS)
        csv.writer(self._file, lineterminator="\n").writerow([source, "" if status is None else status, type_,
                                                              message])
        self._file.flush()
        self.count += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def open_sink(out: Path, fmt: str) -> Sink:
    return NpySink(out) if fmt == "npy" else ParquetSink(out)


def errors_path(out: Path) -> Path:
    """vectors.parquet -> vectors.errors.csv (beside the output, not inside a parquet directory readers scan)."""
    return out.with_suffix(".errors.csv")
