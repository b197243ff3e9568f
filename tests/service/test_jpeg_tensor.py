"""The tensor JPEG path (nvJPEG on CUDA) against the Pillow path. The same code runs here with device="cpu"
(torchvision's libjpeg decoder), so the resize/crop/normalise arithmetic is checked without a GPU; the CUDA
decoder itself only in the gpu-marked test."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from service.images import ImagePreprocessor
from service.jpeg_tensor import TensorJpegPreprocessor
from tests.service.conftest import encode


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def photo_jpegs(photos, size: tuple[int, int]) -> list[bytes]:
    return [encode(Image.fromarray(p).convert("RGB").resize(size), "JPEG", quality=90) for p in photos.values()]


@pytest.mark.parametrize("size", [(640, 480), (1920, 1080), (300, 500)])
def test_pixels_match_the_pillow_path(bundled, photos, size):
    full = ImagePreprocessor(bundled.preprocess, 40_000_000, reduced_jpeg_decode=False)
    tensor = TensorJpegPreprocessor(bundled.preprocess, "cpu")
    for blob in photo_jpegs(photos, size):
        a, b = full(blob), tensor(blob)
        assert a.shape == b.shape == (3, *bundled.preprocess.size)
        # in normalised units (one 8-bit level is about 0.015)
        assert np.abs(a - b).mean() < 0.005, np.abs(a - b).mean()  # measured 0.0007-0.0012


def test_embeddings_match_the_pillow_path(bundled, photos):
    import torch

    pil = ImagePreprocessor(bundled.preprocess, 40_000_000)
    tensor = ImagePreprocessor(bundled.preprocess, 40_000_000, jpeg_decode="cpu")
    tensor.jpeg_on_device = TensorJpegPreprocessor(bundled.preprocess, "cpu")
    blobs = photo_jpegs(photos, (1920, 1080))
    with torch.no_grad():
        emb = [bundled.model.encode_image(torch.from_numpy(np.stack([p(b) for b in blobs]))).numpy()
               for p in (pil, tensor)]
    assert cosine(*emb).min() >= 0.99


def test_non_jpeg_and_refused_jpeg_go_through_pillow(bundled, photos):
    pre = ImagePreprocessor(bundled.preprocess, 40_000_000)
    calls = []

    def refuse(data: bytes) -> np.ndarray:
        calls.append(len(data))
        raise RuntimeError("nvjpeg: unsupported")

    pre.jpeg_on_device = refuse
    png = encode(Image.fromarray(photos["coffee"]), "PNG")
    jpeg = photo_jpegs(photos, (320, 240))[0]
    assert pre(png).shape == pre(jpeg).shape == (3, *bundled.preprocess.size)
    assert calls == [len(jpeg)]  # the PNG never reached the device path; the refused JPEG fell back


def test_cuda_decoding_needs_a_cuda_device():
    from pydantic import ValidationError

    from service.settings import Settings

    with pytest.raises(ValidationError, match="CLIP_JPEG_DECODE=cuda"):
        Settings(device="cpu", jpeg_decode="cuda")


@pytest.mark.gpu
def test_nvjpeg_matches_the_pillow_path(bundled, photos):
    full = ImagePreprocessor(bundled.preprocess, 40_000_000, reduced_jpeg_decode=False)
    gpu = TensorJpegPreprocessor(bundled.preprocess, "cuda")
    for blob in photo_jpegs(photos, (1920, 1080)):
        assert np.abs(full(blob) - gpu(blob)).mean() < 0.005
