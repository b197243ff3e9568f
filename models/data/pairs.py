"""User image–caption pairs for fine-tuning: a CSV of (image path, caption) or a folder with sidecar captions."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

from PIL import Image
from torch.utils.data import Dataset

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
IMAGE_COLUMNS = ("image", "filepath", "path", "file")
CAPTION_COLUMNS = ("caption", "text", "title")


def read_csv_pairs(path: str | Path) -> list[tuple[Path, str]]:
    """Rows of (image path, caption). A header naming image/caption columns is used if present; relative
    image paths are taken relative to the CSV's folder."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r]
    if not rows:
        raise ValueError(f"{path} has no rows")
    header = [c.strip().lower() for c in rows[0]]
    img_col = next((header.index(c) for c in IMAGE_COLUMNS if c in header), None)
    cap_col = next((header.index(c) for c in CAPTION_COLUMNS if c in header), None)
    if img_col is not None and cap_col is not None:
        rows = rows[1:]
    else:
        img_col, cap_col = 0, 1
    pairs = []
    for i, row in enumerate(rows):
        if len(row) <= max(img_col, cap_col):
            raise ValueError(f"{path}: row {i + 1} needs an image path and a caption, got {row!r}")
        img = Path(row[img_col].strip())
        pairs.append((img if img.is_absolute() else path.parent / img, row[cap_col].strip()))
    return pairs


def read_folder_pairs(folder: str | Path) -> list[tuple[Path, str]]:
    """Every image in `folder` (recursively) that has a same-named .txt caption beside it."""
    folder = Path(folder)
    pairs = []
    for img in sorted(folder.rglob("*")):
        cap = img.with_suffix(".txt")
        if img.suffix.lower() in IMAGE_SUFFIXES and cap.is_file():
            pairs.append((img, cap.read_text(encoding="utf-8").strip()))
    if not pairs:
        raise ValueError(f"no image with a sidecar .txt caption found under {folder}")
    return pairs


class PairsDataset(Dataset):
    """(image tensor, caption) from a list of (path, caption)."""

    def __init__(self, pairs: list[tuple[Path, str]], transform: Callable[[Image.Image], object]):
        missing = [str(p) for p, _ in pairs if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} image(s) not found, e.g. {missing[:3]}")
        self.pairs, self.transform = pairs, transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        path, caption = self.pairs[i]
        with Image.open(path) as im:
            return self.transform(im.convert("RGB")), caption
