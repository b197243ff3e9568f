"""Loading an export hashes its files once: a restart skips files unchanged since they matched their sha256, and
any rewrite (even with its mtime put back), a file just written, or a record that cannot be kept means hashing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from export import digest_record, manifest as manifest_mod
from export.digest_record import RECORD_FILE
from export.errors import ExportError
from export.runtime import load_encoders


@pytest.fixture
def hashed(monkeypatch) -> list[str]:
    """Names of the files sha256_file reads (the real function still runs)."""
    names: list[str] = []
    real = manifest_mod.sha256_file

    def counting(path, *args, **kwargs):
        names.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(manifest_mod, "sha256_file", counting)
    return names


@pytest.fixture
def settled(monkeypatch):
    """Files count as settled at once: the copies these tests make are milliseconds old."""
    monkeypatch.setattr(digest_record, "SETTLE_NS", 0)


def flip_middle_byte(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(f.seek(0, 2) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_a_restart_does_not_hash_unchanged_files_again(bundled_export, copy_export, hashed, settled):
    root, manifest = bundled_export
    root = copy_export(root)
    load_encoders(root)
    assert sorted(hashed) == sorted(manifest.files)
    assert (root / "cache" / RECORD_FILE).is_file()
    hashed.clear()
    load_encoders(root)
    assert hashed == []


def test_a_file_rewritten_in_place_with_its_mtime_put_back_is_hashed_and_refused(bundled_export, copy_export,
                                                                                 settled):
    root = copy_export(bundled_export[0])
    load_encoders(root)
    graph = root / "image.onnx"
    before = graph.stat()
    flip_middle_byte(graph)
    os.utime(graph, ns=(before.st_atime_ns, before.st_mtime_ns))  # same size and mtime: only the ctime moved
    with pytest.raises(ExportError, match=r"image\.onnx.*corrupted"):
        load_encoders(root)


def test_a_file_just_written_is_hashed_again_on_the_next_load(bundled_export, copy_export, hashed):
    """Its timestamps may not have ticked yet since a write that came just before the hash."""
    root, manifest = bundled_export
    root = copy_export(root)
    load_encoders(root)
    hashed.clear()
    load_encoders(root)
    assert sorted(hashed) == sorted(manifest.files)


def test_a_record_that_cannot_be_written_or_read_means_hashing_every_time(bundled_export, copy_export, hashed,
                                                                          settled, tmp_path):
    root, manifest = bundled_export
    root = copy_export(root)
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    for _ in range(2):
        load_encoders(root, cache_dir=blocked / "cache")  # the record's directory cannot be made
    assert sorted(hashed) == sorted(list(manifest.files) * 2)
    hashed.clear()
    (root / "cache").mkdir()
    (root / "cache" / RECORD_FILE).write_text("{not json")
    load_encoders(root)
    assert sorted(hashed) == sorted(manifest.files)
