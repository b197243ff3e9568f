"""Run an export directory: `load_encoders(dir, backend, device)` -> image and text encoders over numpy.

    enc = load_encoders("exports/vit-b-32", backend="onnx", device="cpu", threads=4)
    emb = enc.encode_image(pixels)  # float32 [B, 3, H, W] -> float32 [B, D], L2-normalised

Backends: "onnx" (ONNX Runtime; TensorRT EP -> CUDA EP -> CPU on device="cuda") and "tensorrt" (native
engines; from a `python -m export tensorrt` directory, or built once from an ONNX export and cached).
Nothing here imports onnxruntime or tensorrt until a backend that needs it is loaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from export.errors import ExportError
from export.manifest import Manifest, load_tokenizer, read_manifest

log = logging.getLogger(__name__)

BACKENDS = ("onnx", "tensorrt")
DEVICES = ("cpu", "cuda")


class TowerRunner(Protocol):
    providers: list[str]
    max_batch: int | None

    def run(self, x: np.ndarray) -> np.ndarray: ...


@dataclass
class Encoders:
    """The two towers of one export, behind numpy in / numpy out."""

    manifest: Manifest
    export_dir: Path
    image: TowerRunner = field(repr=False)
    text: TowerRunner = field(repr=False)

    @property
    def providers(self) -> list[str]:
        """What actually runs, e.g. ['CUDAExecutionProvider', 'CPUExecutionProvider'] or ['TensorRT 10.x (H100)']."""
        return list(dict.fromkeys(self.image.providers + self.text.providers))

    @property
    def max_batch(self) -> int | None:
        """Largest batch one call runs at once (a TensorRT profile's max), or None when unbounded."""
        caps = [c for c in (self.image.max_batch, self.text.max_batch) if c]
        return min(caps) if caps else None

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        """float32 pixels [B, 3, H, W] (already preprocessed) -> float32 [B, D], L2-normalised."""
        h, w = self.manifest.image_size
        _check_shape(pixels, (3, h, w), "pixels")
        return self._run(self.image, np.asarray(pixels, dtype=np.float32))

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        """int64 token ids [B, L] -> float32 [B, D], L2-normalised."""
        _check_shape(tokens, (self.manifest.context_length,), "tokens")
        return self._run(self.text, np.asarray(tokens, dtype=np.int64))

    def tokenizer(self):
        """The model's tokenizer (list[str] -> int64 [B, L]), rebuilt from the export directory alone."""
        return load_tokenizer(self.manifest, self.export_dir)

    def _run(self, tower: TowerRunner, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros((0, self.manifest.embed_dim), np.float32)
        step = tower.max_batch or len(x)  # TensorRT profiles cap the batch: run larger ones in chunks
        return np.concatenate([tower.run(x[i:i + step]) for i in range(0, len(x), step)])


def _check_shape(x: np.ndarray, item_shape: tuple[int, ...], name: str) -> None:
    if x.ndim != len(item_shape) + 1 or tuple(x.shape[1:]) != item_shape:
        want = ", ".join(str(d) for d in item_shape)
        raise ValueError(f"{name} must have shape [B, {want}], got {list(x.shape)}")


def load_encoders(export_dir: str | Path, backend: str = "onnx", device: str = "cpu", threads: int = 0, *,
                  cache_dir: str | Path | None = None, max_batch: int = 256, verify: bool = True,
                  ort_providers: Sequence[str] | None = None) -> Encoders:
    """Open an export directory (manifest.json checked, sha256 of every file verified) for inference.

    threads: CPU intra-op threads for ONNX Runtime (0 = one per core).
    cache_dir: where TensorRT engines / timing caches built at load time are kept (default <export_dir>/cache).
    max_batch: the largest batch of TensorRT profiles built at load time.
    ort_providers: restrict ONNX Runtime to these execution providers (plus CPU), e.g. to measure the CUDA EP
        on a build that also has the TensorRT EP.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, not {device!r}")
    root = Path(export_dir)
    manifest = read_manifest(root, verify=verify)
    cache = Path(cache_dir) if cache_dir else root / "cache"
    if backend == "onnx":
        return _onnx_encoders(root, manifest, device, threads, cache, max_batch, ort_providers)
    return _tensorrt_encoders(root, manifest, device, cache, max_batch)


def encoders_from_manifest(root: Path, manifest: Manifest, device: str = "cpu", threads: int = 0) -> Encoders:
    """ONNX Runtime encoders for a manifest not yet written to disk (parity check during export)."""
    return _onnx_encoders(root, manifest, device, threads, root / "cache", 256)


def _onnx_encoders(root: Path, manifest: Manifest, device: str, threads: int, cache: Path,
                   max_batch: int, only: Sequence[str] | None = None) -> Encoders:
    from export.runtime.ort import OrtTower

    if manifest.kind != "onnx":
        raise ExportError(f"{root} holds TensorRT engines, not ONNX graphs: load it with backend='tensorrt', "
                          f"or point at the ONNX export it was built from.")
    towers = [OrtTower(root / spec.file, spec, device, threads, manifest.precision, cache, max_batch, only)
              for spec in (manifest.image, manifest.text)]
    return Encoders(manifest, root, *towers)


def _tensorrt_encoders(root: Path, manifest: Manifest, device: str, cache: Path, max_batch: int) -> Encoders:
    from export.runtime.trt import TrtTower, check_engine_target

    if device != "cuda":
        raise ExportError("backend='tensorrt' runs on device='cuda' only; use backend='onnx' on CPU.")
    if manifest.kind == "tensorrt":
        check_engine_target(manifest, root)
        engine_dir, engines = root, (root / manifest.image.file, root / manifest.text.file)
    else:  # an ONNX export: build engines once, keep them (and the timing cache) for the next start
        from export.tensorrt_build import Profile, cached_engines

        engine_dir = cache / "tensorrt"
        engines = cached_engines(root, manifest, engine_dir, Profile(1, min(32, max_batch), max_batch))
    log.info("tensorrt engines from %s", engine_dir)
    return Encoders(manifest, root, TrtTower(engines[0]), TrtTower(engines[1]))
