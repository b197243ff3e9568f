"""nvJPEG (CLIP_JPEG_DECODE=cuda) against the Pillow path, on a GPU. The routing itself (which JPEGs may go to the
device) is tested on CPU in tests/service/test_jpeg_tensor.py; here the CUDA decoder's results.

The Pillow reference is computed here as service/images.py computes it for an RGB JPEG (open, EXIF transpose,
RGB, the model's eval transform), because service.images imports FastAPI, which GPU machines may lack.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from models.preprocess import eval_transform
from service.jpeg_tensor import JpegOnDevice, TensorJpegPreprocessor
from tests.gpu.conftest import jpeg

pytestmark = pytest.mark.gpu


def pillow_pixels(pre, data: bytes) -> np.ndarray:
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    return eval_transform(pre)(img).numpy()


def rotated(photo: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg(Image.fromarray(photo).resize((640, 400)), exif=exif.tobytes())


def test_nvjpeg_matches_the_pillow_path(bundled, photos):
    gpu = TensorJpegPreprocessor(bundled.preprocess, "cuda")
    for name, photo in photos.items():
        blob = jpeg(Image.fromarray(photo).resize((1920, 1080), Image.BICUBIC))
        diff = np.abs(pillow_pixels(bundled.preprocess, blob) - gpu(blob)).mean()
        assert diff < 0.005, (name, diff)  # normalised units; one 8-bit level is about 0.015


def test_rotated_jpeg_goes_to_pillow_and_comes_out_upright(bundled, photos):
    fallbacks: list[str] = []
    device = JpegOnDevice(bundled.preprocess, "cuda", on_fallback=fallbacks.append)
    upright = jpeg(Image.fromarray(photos["chelsea"]).resize((640, 400)))
    blob = rotated(photos["chelsea"], 6)
    out = device(Image.open(io.BytesIO(upright)), upright)
    assert out is not None and np.abs(out - pillow_pixels(bundled.preprocess, upright)).mean() < 0.005
    assert device(Image.open(io.BytesIO(blob)), blob) is None and fallbacks == ["orientation"]


def test_nvjpeg_ignores_exif_orientation_which_is_why_rotated_jpegs_are_routed_away(bundled, photos):
    """torchvision documents apply_exif_orientation as CPU-only. If this starts failing, a newer torchvision
    rotates on the GPU too, and service/jpeg_tensor.py could send rotated JPEGs to nvJPEG."""
    blob = rotated(photos["chelsea"], 6)
    sideways = np.abs(TensorJpegPreprocessor(bundled.preprocess, "cuda")(blob)
                      - pillow_pixels(bundled.preprocess, blob)).mean()
    assert sideways > 0.05, sideways


def test_gpu_memory_per_thread_for_a_40_megapixel_jpeg(bundled):
    """The peak torch allocates for one 40 MP JPEG (CLIP_MAX_IMAGE_PIXELS' default); docs say about 0.75 GB per
    preprocessing thread (torch's share; nvJPEG's own buffers come on top). Printed for the GPU report."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (433, 650, 3), dtype=np.uint8)  # smooth noise: upscaled, JPEG-friendly
    blob = jpeg(Image.fromarray(small).resize((7744, 5163), Image.BILINEAR))  # 39.98 MP
    gpu = TensorJpegPreprocessor(bundled.preprocess, "cuda")
    gpu(blob)  # warm-up: nvJPEG handles and kernels
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    gpu(blob)
    peak = torch.cuda.max_memory_allocated() - base
    print(f"GPU memory for one 7744x5163 JPEG: torch peak {peak / 2**30:.2f} GiB allocated")
    assert peak < 1.0 * 2**30, peak
