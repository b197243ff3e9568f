"""One towers runtime: a model's image and text encoders behind one interface (base.Towers), numpy in, numpy out.

    enc = load_encoders("exports/vit-b-32", backend="onnx", device="cpu", threads=4)  # an export directory
    enc = TorchTowers.load("ViT-B-32", device="cuda", precision="fp16")               # export.runtime.eager
    emb = enc.encode_image(pixels)  # float32 [B, 3, H, W] -> float32 [B, D], L2-normalised

Implementations, one module each: eager.py (PyTorch, from models.factory), ort.py (ONNX Runtime; TensorRT EP -> CUDA
EP -> CPU on device="cuda"), trt.py (TensorRT engines of a `python -m export tensorrt` directory). Nothing here
imports torch, onnxruntime or tensorrt until an implementation is loaded, and loading never builds a TensorRT engine.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from export.digest_record import RECORD_FILE
from export.manifest import Manifest, read_manifest
from export.runtime.base import Encoders, TowerRunner, Towers

log = logging.getLogger(__name__)

BACKENDS = ("onnx", "tensorrt")
DEVICES = ("cpu", "cuda")
__all__ = ["BACKENDS", "DEVICES", "Encoders", "TowerRunner", "Towers", "encoders_from_manifest", "load_encoders"]


def load_encoders(export_dir: str | Path, backend: str = "onnx", device: str = "cpu", threads: int = 0, *,
                  cache_dir: str | Path | None = None, max_batch: int = 256, verify: bool = True,
                  ort_providers: Sequence[str] | None = None) -> Encoders:
    """Open an export directory (manifest.json checked, sha256 of every file verified) for inference.

    verify: hash every file the manifest lists, except those unchanged since they last matched (a record in the
        cache directory: export/digest_record.py); `python -m export verify` always hashes them all.

    threads: CPU intra-op threads for ONNX Runtime (0 = one per core).
    cache_dir: where ONNX Runtime's TensorRT execution provider keeps its engines, and the record of verified
        files is kept (default <export_dir>/cache).
    max_batch: the largest batch of ONNX Runtime's TensorRT EP profiles.
    ort_providers: restrict ONNX Runtime to these execution providers (plus CPU), e.g. to measure the CUDA EP
        on a build that also has the TensorRT EP.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, not {device!r}")
    root = Path(export_dir)
    cache = Path(cache_dir) if cache_dir else None
    manifest = read_manifest(root, verify=verify, record=(cache or root / "cache") / RECORD_FILE)
    if backend == "onnx":
        from export.runtime.ort import onnx_encoders

        return onnx_encoders(root, manifest, device, threads, cache, max_batch, ort_providers)
    from export.runtime.trt import tensorrt_encoders

    return tensorrt_encoders(root, manifest, device)


def encoders_from_manifest(root: Path, manifest: Manifest, device: str = "cpu", threads: int = 0) -> Encoders:
    """ONNX Runtime encoders for a manifest not yet written to disk (parity check during export)."""
    from export.runtime.ort import onnx_encoders

    return onnx_encoders(root, manifest, device, threads)
