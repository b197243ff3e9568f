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
from bench.machine import OtherLoad, busy_cpu_seconds, own_cpu_seconds


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


# --- decode_limit: the most images/s this host can decode + resize for the model, on all cores -------------------
def to_uint8(data: bytes, pre, max_pixels: int = 40_000_000) -> np.ndarray:
    """JPEG bytes -> uint8 [H, W, 3] at the model's input size: what a front-end process does to an image (the
    server's reduced decode, then models.preprocess.eval_uint8's resize and crop), without the normalisation the
    engine does."""
    from models.preprocess import eval_uint8
    from service.images import decode

    return eval_uint8(decode(data, max_pixels, min(pre.size)), pre)


def _count_decodes(data: bytes, pre, seconds: float) -> tuple[int, float, float]:
    """In a pool process: (images decoded, wall seconds, CPU seconds), after one warm-up decode."""
    to_uint8(data, pre)
    n, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        to_uint8(data, pre)
        n += 1
    return n, time.perf_counter() - start, time.process_time() - cpu


def decode_limit(data: bytes, pre, seconds: float = 3.0, processes: int | None = None) -> dict:
    """Images/s of `to_uint8` over one JPEG with one process per core, all at once (processes, not threads: Pillow
    holds the GIL for part of each image). The most any server on this host could hand an accelerator.

    On a shared machine the pool gets what other processes leave, so the CPU cost is kept too: `images_per_s` is
    what the pool did, `cpu_images_per_s` what the same cores would do alone (cores / CPU seconds per image)."""
    from concurrent.futures import ProcessPoolExecutor

    from bench.machine import cores

    processes = processes or cores()
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(_count_decodes, [data] * processes, [pre] * processes, [0.05] * processes))  # start them all
        start, busy0 = time.perf_counter(), busy_cpu_seconds()
        runs = list(pool.map(_count_decodes, [data] * processes, [pre] * processes, [seconds] * processes))
        elapsed, busy1 = time.perf_counter() - start, busy_cpu_seconds()
    images, cpu = sum(n for n, _, _ in runs), sum(c for _, _, c in runs)
    other = None if None in (busy0, busy1) else round(max(0.0, busy1 - busy0 - cpu) / elapsed, 2)
    return {"images_per_s": sum(n / wall for n, wall, _ in runs), "processes": processes,
            "per_process_images_per_s": [round(n / wall, 1) for n, wall, _ in runs],
            "cpu_ms_per_image": round(1000 * cpu / images, 3) if images else None,
            "cpu_images_per_s": processes * images / cpu if cpu else None,
            "input_size": list(pre.size), "jpeg_bytes": len(data), "other_processes_cores": other}
