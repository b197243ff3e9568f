"""The towers interface every runtime implements: a model's image and text encoders, numpy in, numpy out.

    towers.encode_image(pixels)  # float32 [B, 3, H, W], preprocessed -> float32 [B, D], L2-normalised
    towers.encode_text(tokens)   # int64 [B, L] token ids             -> float32 [B, D], L2-normalised

Serving (service/backends), the parity check (export/parity.py), both benchmarks (export/bench.py, bench/encoder.py),
the GPU check (export/gpu_check.py) and the evaluation (models/eval.py) run encoders through this and nothing else.
Implementations: eager.py (PyTorch), ort.py (ONNX Runtime), trt.py (TensorRT engines), each loaded only when used.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from export.manifest import Manifest, load_tokenizer


class Towers(ABC):
    """A model's two encoders on one device, in one precision."""

    device: str  # "cpu" | "cuda"
    precision: str  # "fp32" | "fp16" | "int8": arithmetic inside; inputs and outputs stay float32 / int64
    embed_dim: int  # D

    @property
    @abstractmethod
    def providers(self) -> list[str]:
        """What actually runs, e.g. ['CPUExecutionProvider'], ['torch 2.x cuda fp16'] or ['TensorRT 10.x (H100)']."""

    @property
    def max_batch(self) -> int | None:
        """Largest batch one call runs at once (a TensorRT profile's max), or None when unbounded."""
        return None

    @abstractmethod
    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        """float32 pixels [B, 3, H, W] (already preprocessed) -> float32 [B, D], L2-normalised."""

    @abstractmethod
    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        """int64 token ids [B, L] -> float32 [B, D], L2-normalised."""


class TowerRunner(Protocol):
    """One graph or engine: numpy [B, ...] in, float32 [B, D] out (ort.OrtTower, trt.TrtTower)."""

    providers: list[str]
    max_batch: int | None

    def run(self, x: np.ndarray) -> np.ndarray: ...


@dataclass
class Encoders(Towers):
    """The two towers of an export directory (ONNX graphs or TensorRT engines), with its manifest."""

    manifest: Manifest
    export_dir: Path
    image: TowerRunner = field(repr=False)
    text: TowerRunner = field(repr=False)
    device: str = "cpu"

    @property
    def precision(self) -> str:  # type: ignore[override]
        return self.manifest.precision

    @property
    def embed_dim(self) -> int:  # type: ignore[override]
        return self.manifest.embed_dim

    @property
    def providers(self) -> list[str]:
        return list(dict.fromkeys(self.image.providers + self.text.providers))

    @property
    def max_batch(self) -> int | None:
        caps = [c for c in (self.image.max_batch, self.text.max_batch) if c]
        return min(caps) if caps else None

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        h, w = self.manifest.image_size
        check_shape(pixels, (3, h, w), "pixels")
        return self._run(self.image, np.asarray(pixels, dtype=np.float32))

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        check_shape(tokens, (self.manifest.context_length,), "tokens")
        return self._run(self.text, np.asarray(tokens, dtype=np.int64))

    def tokenizer(self):
        """The model's tokenizer (list[str] -> int64 [B, L]), from the export directory alone when it has its
        vocabulary (export/manifest.py load_tokenizer)."""
        return load_tokenizer(self.manifest, self.export_dir)

    def _run(self, tower: TowerRunner, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros((0, self.manifest.embed_dim), np.float32)
        step = tower.max_batch or len(x)  # TensorRT profiles cap the batch: run larger ones in chunks
        return np.concatenate([tower.run(x[i:i + step]) for i in range(0, len(x), step)])


def check_shape(x: np.ndarray, item_shape: tuple[int, ...], name: str) -> None:
    """Raise ValueError unless x is [B, *item_shape]."""
    if x.ndim != len(item_shape) + 1 or tuple(x.shape[1:]) != item_shape:
        want = ", ".join(str(d) for d in item_shape)
        raise ValueError(f"{name} must have shape [B, {want}], got {list(x.shape)}")
