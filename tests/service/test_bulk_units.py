"""Units of `clip-serve embed`: the outputs' commit points after a crash at any step, and what arguments name."""

from __future__ import annotations

import csv
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from service.bulk.runner import batches
from service.bulk.sinks import NpySink, OutputError, ParquetSink, Rows
from service.bulk.sources import Item, SourceError, image_items, text_items


def rows(sources: list[str], fingerprint: str = "f", d: int = 4) -> Rows:
    rng = np.random.default_rng(len(sources))
    return Rows(sources, rng.standard_normal((len(sources), d)).astype(np.float32), "m", fingerprint)


# --- npy: the header is the commit point --------------------------------------------------------------------
def test_npy_resume_drops_a_group_cut_off_before_its_header_was_rewritten(tmp_path):
    out = tmp_path / "v.npy"
    first = rows(["a", "b"])
    sink = NpySink(out)
    sink.write(first)
    sink.close()
    # a crash after the vectors and index rows of the next group were written, before the header: 2 rows committed
    with open(out, "ab") as f:
        f.write(np.ones((3, 4), np.float32).tobytes())
    with open(out.with_suffix(".index.csv"), "a", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([[2, "c", "m", "f"], [3, "d", "m", "f"], [4, "e,"]])
    resumed = NpySink(out)
    assert resumed.done == {"a", "b"} and resumed.n == 2 and resumed.fingerprint == "f"
    assert np.array_equal(np.load(out), first.vectors), "the torn tail is gone, np.load reads what was committed"
    resumed.write(rows(["c"]))
    resumed.close()
    matrix = np.load(out)
    with open(out.with_suffix(".index.csv"), newline="") as f:
        index = list(csv.DictReader(f))
    assert matrix.shape == (3, 4) and [r["source"] for r in index] == ["a", "b", "c"]
    assert [r["row"] for r in index] == ["0", "1", "2"]


def test_npy_refuses_a_file_it_did_not_write(tmp_path):
    np.save(tmp_path / "v.npy", np.zeros((2, 4), np.float32))
    with pytest.raises(OutputError, match="not written by clip-serve embed"):
        NpySink(tmp_path / "v.npy")
    np.save(tmp_path / "w.npy", np.zeros((2, 4), np.float64))
    with pytest.raises(OutputError, match="not written by clip-serve embed"):
        NpySink(tmp_path / "w.npy")


def test_npy_index_rows_without_a_matrix_were_never_committed(tmp_path):
    (tmp_path / "v.index.csv").write_text("row,source,model,fingerprint\n0,a,m,f\n")
    assert NpySink(tmp_path / "v.npy").done == set()


# --- parquet: a part is renamed into place whole ------------------------------------------------------------
def test_parquet_parts_resume_and_a_half_written_part_is_ignored(tmp_path):
    out = tmp_path / "v.parquet"
    sink = ParquetSink(out)
    sink.write(rows(["a", "b"]))
    (out / ".part-000001.parquet.tmp").write_bytes(b"PAR1 half a part")  # a crash while writing the next part
    assert pq.read_table(out).num_rows == 2, "readers skip the hidden temporary file"
    resumed = ParquetSink(out)
    assert resumed.done == {"a", "b"} and resumed.fingerprint == "f" and resumed.dimensions == 4
    assert not list(out.glob(".part-*")), "the stale temporary is removed"
    resumed.write(rows(["c"]))
    assert sorted(pq.read_table(out).column("source").to_pylist()) == ["a", "b", "c"]
    assert sorted(os.listdir(out)) == ["part-000000.parquet", "part-000001.parquet"]


def test_parquet_refuses_foreign_files_and_mixed_fingerprints(tmp_path):
    (tmp_path / "file.parquet").write_bytes(b"x")
    with pytest.raises(OutputError, match="is a file"):
        ParquetSink(tmp_path / "file.parquet")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "data.parquet").write_bytes(b"x")
    with pytest.raises(OutputError, match="did not write"):
        ParquetSink(tmp_path / "theirs")
    sink = ParquetSink(tmp_path / "mixed")
    sink.write(rows(["a"], "f1"))
    sink.write(rows(["b"], "f2"))  # only possible by hand: the runner checks every answer
    with pytest.raises(OutputError, match="several fingerprints"):
        ParquetSink(tmp_path / "mixed")


# --- sources and batches ------------------------------------------------------------------------------------
def test_folders_globs_lists_and_urls(tmp_path, monkeypatch):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/2.jpg", "a/1.PNG", "a/b/3.webp", "a/notes.md"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "list.txt").write_text("a/1.PNG\n\nhttps://x.test/4.jpg\n")
    monkeypatch.chdir(tmp_path)
    items = image_items(["a", "./a/2.jpg", "a/**/*.webp", "list.txt", "https://x.test/5.jpg"])
    assert [it.source for it in items] == ["a/1.PNG", "a/2.jpg", "a/b/3.webp", "https://x.test/4.jpg",
                                           "https://x.test/5.jpg"], "sorted walk, duplicates once, notes.md skipped"
    assert [it.kind for it in items] == ["file", "file", "file", "url", "url"]
    with pytest.raises(SourceError, match="no column 'url'"):
        (tmp_path / "l.csv").write_text("path\na/1.PNG\n")
        image_items(["l.csv"], column="url")
    (tmp_path / "t.csv").write_text('id,caption\n1,"a red, round thing"\n2,a blue square\n')
    assert [it.source for it in text_items("t.csv", "caption")] == ["a red, round thing", "a blue square"]


def test_batches_keep_one_kind_each():
    items = [Item("a", "file", "a"), Item("https://u", "url"), Item("b", "file", "b"), Item("c", "file", "c")]
    assert [[it.source for it in b] for b in batches(items, 2, "client")] == [["a", "https://u"], ["b", "c"]]
    assert [[it.source for it in b] for b in batches(items, 2, "server")] == [["a"], ["https://u"], ["b", "c"]]
