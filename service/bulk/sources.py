"""What `clip-serve embed` embeds: images found under folders and globs or listed in files, or texts.

Every item has a `source`, the key it is written under and skipped by on a rerun: a found file's path as given
(normalised: `./photos/a.jpg` and `photos/a.jpg` are one source), a list row exactly as written, a text itself.
Each distinct source is embedded once, in the order found; folders are walked in sorted order.
"""

from __future__ import annotations

import csv
import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
LIST_SUFFIXES = frozenset({".csv", ".txt"})
URL_PREFIXES = ("https://", "http://")


@dataclass(frozen=True)
class Item:
    """One thing to embed."""

    source: str  # the output's key: path as given, list row as written, URL, or the text
    kind: str  # "file" | "url" | "text"
    location: str = ""  # the file to read (lists' relative rows resolve against the list's folder)


class SourceError(ValueError):
    """An argument names nothing to embed (no such path, an empty glob, a missing CSV column)."""


def _walk(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                yield Path(root) / name


def read_rows(path: Path, column: Optional[str]) -> Iterator[str]:
    """Non-empty entries of a list: a CSV's `column` (default: its first) or a text file's lines."""
    if path.suffix.lower() != ".csv":
        with open(path, encoding="utf-8") as f:
            yield from (line.strip() for line in f if line.strip())
        return
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        name = column or (fields[0] if fields else None)
        if name not in fields:
            raise SourceError(f"{path}: no column {name!r} (columns: {', '.join(fields) or 'none'}); "
                              f"name one with --column")
        yield from (row[name].strip() for row in reader if (row.get(name) or "").strip())


def _listed(path: Path, column: Optional[str]) -> Iterator[Item]:
    for entry in read_rows(path, column):
        if entry.lower().startswith(URL_PREFIXES):
            yield Item(entry, "url")
        else:
            yield Item(entry, "file", os.path.normpath(path.parent / os.path.expanduser(entry)))


def _one(arg: str, column: Optional[str]) -> Iterator[Item]:
    path = Path(arg)
    if arg.lower().startswith(URL_PREFIXES):
        yield Item(arg, "url")
    elif path.is_dir():
        yield from (Item(os.path.normpath(p), "file", os.path.normpath(p)) for p in _walk(path))
    elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        yield from _listed(path, column)
    elif path.is_file():
        yield Item(os.path.normpath(arg), "file", os.path.normpath(arg))
    elif glob.has_magic(arg):
        matches = sorted(glob.glob(arg, recursive=True))
        if not matches:
            raise SourceError(f"{arg}: the pattern matches nothing")
        for match in matches:
            yield from _one(match, column)
    else:
        raise SourceError(f"{arg}: no such file or folder")


def unique(items: Iterable[Item]) -> list[Item]:
    seen: set[str] = set()
    return [it for it in items if not (it.source in seen or seen.add(it.source))]  # type: ignore[func-returns-value]


def image_items(args: Iterable[str], column: Optional[str] = None) -> list[Item]:
    """Images under folders (recursively, by suffix), matching globs, named directly, or listed one per row of a
    .txt / .csv file (paths relative to the list's folder, or http(s) URLs)."""
    return unique(it for arg in args for it in _one(arg, column))


def text_items(path: str, column: Optional[str] = None) -> list[Item]:
    """Texts: the lines of a text file, or a CSV column."""
    if not Path(path).is_file():
        raise SourceError(f"{path}: no such file")
    return unique(Item(text, "text") for text in read_rows(Path(path), column))
