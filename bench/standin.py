"""A stand-in backend (bench only): what the serving stack can feed an accelerator, whatever the accelerator.

Its encoders do no arithmetic: a call waits a fixed time per batch (default 2 ms + 0.02 ms per item, about what one
GPU spends on a ViT-B/32 batch) without holding the GIL, then returns deterministic L2-normalised vectors of the
bundled model's dimension. So a benchmark through it measures the server alone (HTTP, parsing, decoding, queueing,
batching), as a fast device would see it. Its model id and fingerprint say it is a stand-in, so its vectors cannot
be mistaken for a model's.

It is never selectable from service/settings.py: it is injected with `service.app.create_app(settings,
backend_factory=load_standin)`, which `python -m bench.standin_server` does. Its timing comes from the environment:

    BENCH_STANDIN_BATCH_MS   fixed time per encoder call (default 2.0)
    BENCH_STANDIN_ITEM_MS    added time per item in the call (default 0.02)
    BENCH_STANDIN_IMAGE_SIZE side of the square input it asks preprocessing for (default: the bundled model's)
    BENCH_STANDIN_NORMALISE  where an engine process's uint8 pixels are normalised (CLIP_WORKERS >= 1):
                             `device` (default) as eager PyTorch on CUDA does (service/device_pixels.py: the CPU
                             copies the batch into the upload buffer, the device normalises), or `cpu` as ONNX
                             Runtime and TensorRT engines do today (models.preprocess.normalise, then encode_image)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from models import DEFAULT_MODEL
from models.preprocess import PreprocessConfig
from service.backends.base import Backend

VECTORS = 64  # distinct output vectors; an item gets one picked by a few of its input values
CONTEXT_LENGTH = 77


@dataclass(frozen=True)
class StandInTiming:
    """How long one encoder call takes: batch_ms + item_ms x items."""

    batch_ms: float = 2.0  # per call: kernel launches, synchronisation, the fixed part of a GPU batch
    item_ms: float = 0.02  # per item: ~50,000 items/s at large batches, well above what one host decodes

    @classmethod
    def from_env(cls) -> "StandInTiming":
        return cls(float(os.environ.get("BENCH_STANDIN_BATCH_MS", cls.batch_ms)),
                   float(os.environ.get("BENCH_STANDIN_ITEM_MS", cls.item_ms)))

    def seconds(self, items: int) -> float:
        return (self.batch_ms + self.item_ms * items) / 1000


def bundled_config(model_dir: str | Path = DEFAULT_MODEL) -> dict:
    """The bundled checkpoint's open_clip_config.json (read as JSON: no torch, no open_clip)."""
    return json.loads((Path(model_dir) / "open_clip_config.json").read_text())


class StandInBackend(Backend):
    """Encoders that take a fixed time and hold no GIL while they "compute"."""

    name, device, precision = "standin", "cpu", "fp32"
    context_length = CONTEXT_LENGTH
    measure_batches = True  # as a real backend: the server picks its max batch from the stand-in's timing

    def __init__(self, timing: StandInTiming | None = None, image_size: int | None = None, sleep=time.sleep,
                 normalise_on: str = "device"):
        cfg = bundled_config()
        self.timing = timing or StandInTiming()
        pre = PreprocessConfig.from_open_clip(cfg.get("preprocess_cfg", {}))
        self.preprocess = PreprocessConfig(size=(image_size, image_size), mean=pre.mean, std=pre.std,
                                           interpolation=pre.interpolation, resize_mode=pre.resize_mode) \
            if image_size else pre
        self.embed_dim = int(cfg["model_cfg"]["embed_dim"])
        self.logit_scale = 100.0
        spec = f"{self.timing.batch_ms:g}ms+{self.timing.item_ms:g}ms/item,{self.preprocess.size[0]}px"
        self.model_id = f"stand-in ({spec}; not a model)"
        self.fingerprint = "standin" + hashlib.sha256(spec.encode()).hexdigest()[:9]  # 16 characters, as a model's
        rng = np.random.default_rng(0)
        table = rng.standard_normal((VECTORS, self.embed_dim)).astype(np.float32)
        self._vectors = table / np.linalg.norm(table, axis=1, keepdims=True)  # [VECTORS, D], unit rows
        self._sleep = sleep
        self.tokenizer = self._tokenize
        if normalise_on not in ("device", "cpu"):
            raise ValueError(f"BENCH_STANDIN_NORMALISE must be device or cpu, not {normalise_on!r}")
        self.encode_pixels = self._encode_pixels if normalise_on == "device" else None
        self._upload: np.ndarray | None = None  # the host buffer a device's upload would read (grown on demand)

    def _tokenize(self, texts: list[str]) -> np.ndarray:
        """A hash per text in the first position: cheap and deterministic (texts are not what this measures)."""
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for i, t in enumerate(texts):
            out[i, 0] = int.from_bytes(hashlib.blake2b(t.encode("utf-8", "replace"), digest_size=4).digest(), "big")
        return out

    def tokenize(self, texts: list[str]) -> np.ndarray:
        return self._tokenize(texts)

    def _wait(self, items: int) -> None:
        # time.sleep releases the GIL, as a device call does while the device computes; sleeping to a deadline
        # keeps the wait at its length however the scheduler wakes us
        until = time.perf_counter() + self.timing.seconds(items)
        while (left := until - time.perf_counter()) > 0:
            self._sleep(left)

    def _pick(self, keys: np.ndarray) -> np.ndarray:
        """[B] numbers -> [B, D] unit vectors, the same for the same input."""
        return self._vectors[np.abs(keys * 997).astype(np.int64) % VECTORS]

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        self._wait(len(pixels))
        return self._pick(pixels[:, :, 0, 0].sum(axis=1) if len(pixels) else np.zeros(0))  # [B, 3, H, W] -> [B, D]

    def _encode_pixels(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        """B uint8 [H, W, 3] images (a list, or an array [B, H, W, 3]) -> [B, D], as an engine on a GPU spends the CPU
        on them: one copy of each image into the upload buffer (service/device_pixels.py copies into pinned memory);
        normalising is the device's, in the wait. The vectors are encode_image's for the same pixels (its keys
        normalised from one pixel per image)."""
        from models.preprocess import normalise  # here: a baseline checkout's models (bench.feed) may lack it

        n, shape = len(batch), (batch[0].shape if len(batch) else (0, 0, 3))
        if self._upload is None or len(self._upload) < n or self._upload.shape[1:] != shape:
            self._upload = np.empty((max(n, 64), *shape), dtype=np.uint8)
        if n:
            np.stack(batch, out=self._upload[:n])
        self._wait(n)
        keys = normalise(np.ascontiguousarray(self._upload[:n, :1, :1, :]), self.preprocess)  # [B, 3, 1, 1]
        return self._pick(keys[:, :, 0, 0].sum(axis=1) if n else np.zeros(0))

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        self._wait(len(tokens))
        return self._pick(tokens[:, 0].astype(np.float64) if len(tokens) else np.zeros(0))


def load_standin(settings=None) -> StandInBackend:
    """The backend factory `python -m bench.standin_server` gives create_app. A module-level function on purpose:
    it pickles by reference, so a process that owns the backend (issue 16's engine process) can be handed it."""
    size = os.environ.get("BENCH_STANDIN_IMAGE_SIZE")
    return StandInBackend(StandInTiming.from_env(), int(size) if size else None,
                          normalise_on=os.environ.get("BENCH_STANDIN_NORMALISE", "device"))
