"""1920x1080 JPEG preprocessing with reduced-size decoding (libjpeg DCT scaling, Pillow `draft`) vs full decoding.

Speed: single-thread preprocess items/s of the server's own ImagePreprocessor, both ways, on real photos.
Quality: cosine between the embeddings of the two paths for each photo, through the ONNX image encoder; the
cosine between *different* photos is reported beside it, so a model that maps everything close together
(random weights do) cannot pass for a good check.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
from tqdm import tqdm

from bench.assets import BenchModel, photo_jpegs
from bench.machine import OtherLoad, own_cpu_seconds


def preprocess_rate(pre, blobs: Sequence[bytes], reduced: bool, seconds: float) -> float:
    """Items/s of ImagePreprocessor over `blobs`, one thread, at least one pass."""
    from service.images import ImagePreprocessor

    p = ImagePreprocessor(pre, max_pixels=40_000_000, reduced_jpeg_decode=reduced)
    p(blobs[0])  # warm-up
    n, start = 0, time.perf_counter()
    while n < len(blobs) or time.perf_counter() - start < seconds:
        p(blobs[n % len(blobs)])
        n += 1
    return n / (time.perf_counter() - start)


def cosines(model: BenchModel, pre, blobs: Sequence[bytes]) -> dict[str, float]:
    from export.runtime import load_encoders
    from service.images import ImagePreprocessor

    enc = load_encoders(model.export_dir, backend="onnx", device="cpu")
    emb = {}
    for reduced in (False, True):
        p = ImagePreprocessor(pre, max_pixels=40_000_000, reduced_jpeg_decode=reduced)
        emb[reduced] = enc.encode_image(np.stack([p(b) for b in blobs]))  # [N, D], L2-normalised
    same = (emb[True] * emb[False]).sum(axis=1)  # per photo: reduced vs full
    full = emb[False]
    cross = full @ full.T
    off_diag = cross[~np.eye(len(blobs), dtype=bool)]
    return {"min_cosine_reduced_vs_full": float(same.min()), "mean_cosine_reduced_vs_full": float(same.mean()),
            "max_cosine_between_different_photos": float(off_diag.max()),
            "mean_cosine_between_different_photos": float(off_diag.mean())}


def measure(models: Sequence[BenchModel], seconds: float = 3.0, width: int = 1920, height: int = 1080) -> dict:
    """Speed per model input size, and cosines per model."""
    from export.manifest import read_manifest

    blobs = photo_jpegs(width, height)
    out: dict = {"image": f"{len(blobs)} real photos (skimage.data) resized to {width}x{height}, JPEG q90",
                 "models": {}}
    for model in tqdm(models, desc="decode", unit="model"):
        pre = read_manifest(model.export_dir, verify=False).preprocess_config
        with OtherLoad(own_cpu_seconds) as other:
            full = preprocess_rate(pre, blobs, reduced=False, seconds=seconds)
            reduced = preprocess_rate(pre, blobs, reduced=True, seconds=seconds)
        out["models"][model.key] = {"input_size": list(pre.size), "full_items_per_s": full,
                                    "reduced_items_per_s": reduced, "speedup": reduced / full,
                                    "other_processes_cores": other.cores,
                                    **cosines(model, pre, blobs)}
    return out
