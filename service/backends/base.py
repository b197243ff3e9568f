"""What the server needs from any backend."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

import numpy as np

from models.preprocess import PreprocessConfig


class Backend(ABC):
    """Encoders plus everything needed to feed them and to label their output."""

    name: str  # "torch" | "onnx" | "tensorrt"
    device: str  # "cpu" | "cuda"
    precision: str  # "fp32" | "fp16"
    model_id: str
    fingerprint: str
    embed_dim: int
    context_length: int
    logit_scale: float
    preprocess: PreprocessConfig
    tokenizer: Callable[..., Any]  # list[str] -> int64 [B, context_length]
    max_batch: int | None = None  # a hard limit of the engine (TensorRT profile), if any

    @abstractmethod
    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        """float32 [B, 3, H, W] -> L2-normalised float32 [B, D]."""

    @abstractmethod
    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        """int64 [B, context_length] -> L2-normalised float32 [B, D]."""

    def tokenize(self, texts: list[str]) -> np.ndarray:
        """Texts -> int64 [B, context_length]; over-long texts are truncated, never an error."""
        return np.asarray(self.tokenizer(texts), dtype=np.int64)

    def warmup(self, image_batch: int, text_batch: int) -> None:
        """Run both encoders once at the largest batch sizes, so the first request pays nothing extra."""
        h, w = self.preprocess.size
        self.encode_image(np.zeros((image_batch, 3, h, w), dtype=np.float32))
        self.encode_text(self.tokenize(["warm up"] * text_batch))

    def describe(self) -> dict[str, Any]:
        return {"model": self.model_id, "fingerprint": self.fingerprint, "dimensions": self.embed_dim,
                "backend": self.name, "device": self.device, "precision": self.precision,
                "context_length": self.context_length, "logit_scale": round(self.logit_scale, 4),
                "image_size": list(self.preprocess.size), "preprocess": self.preprocess.to_dict()}
