"""The tensor JPEG path (nvJPEG on CUDA) against the Pillow path. The same code runs here with device="cpu"
(torchvision's libjpeg decoder, EXIF orientation ignored as nvJPEG ignores it), so the resize/crop/normalise
arithmetic and the routing (which JPEGs may go to the device) are checked without a GPU; the CUDA decoder itself
in tests/gpu/test_nvjpeg.py."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from service.images import ImagePreprocessor
from service.jpeg_tensor import JpegOnDevice, TensorJpegPreprocessor
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
    tensor.jpeg_on_device = JpegOnDevice(bundled.preprocess, "cpu")
    blobs = photo_jpegs(photos, (1920, 1080))
    with torch.no_grad():
        emb = [bundled.model.encode_image(torch.from_numpy(np.stack([p(b) for b in blobs]))).numpy()
               for p in (pil, tensor)]
    assert cosine(*emb).min() >= 0.99


def on_cpu_device(pre) -> tuple[ImagePreprocessor, list[str], list[int]]:
    """The server's preprocessor with the device path on the CPU stand-in; records fallbacks and device calls."""
    fallbacks: list[str] = []
    device = JpegOnDevice(pre, "cpu", on_fallback=fallbacks.append)
    calls: list[int] = []
    decode = device.decode
    device.decode = lambda data: calls.append(len(data)) or decode(data)
    proc = ImagePreprocessor(pre, 40_000_000, reduced_jpeg_decode=False)
    proc.jpeg_on_device = device
    return proc, fallbacks, calls


def rotated_jpeg(photo: np.ndarray, orientation: int) -> bytes:
    """A landscape JPEG whose EXIF says to display it rotated (6: 90 degrees clockwise), as phones save them."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(photo).convert("RGB").resize((640, 400)), "JPEG", quality=90, exif=exif.tobytes())


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_rotated_jpeg_is_decoded_upright(bundled, photos, orientation):
    proc, fallbacks, calls = on_cpu_device(bundled.preprocess)
    pillow = ImagePreprocessor(bundled.preprocess, 40_000_000, reduced_jpeg_decode=False)
    blob = rotated_jpeg(photos["chelsea"], orientation)
    assert np.abs(proc(blob) - pillow(blob)).mean() < 0.005  # sideways or upside down would be ~0.5
    assert fallbacks == ["orientation"] and calls == []


def test_upright_jpeg_goes_to_the_device(bundled, photos):
    proc, fallbacks, calls = on_cpu_device(bundled.preprocess)
    blob = rotated_jpeg(photos["chelsea"], 1)  # orientation 1 = upright: nothing to rotate
    proc(blob)
    assert fallbacks == [] and calls == [len(blob)]


def test_cmyk_jpeg_goes_to_pillow(bundled, photos):
    proc, fallbacks, calls = on_cpu_device(bundled.preprocess)
    pillow = ImagePreprocessor(bundled.preprocess, 40_000_000, reduced_jpeg_decode=False)
    blob = encode(Image.fromarray(photos["coffee"]).convert("CMYK"), "JPEG", quality=90)
    assert np.abs(proc(blob) - pillow(blob)).mean() < 0.005
    assert fallbacks == ["mode"] and calls == []


def test_refused_jpeg_falls_back_counted_and_logged_once(bundled, photos, caplog):
    proc, fallbacks, _ = on_cpu_device(bundled.preprocess)

    def refuse(data: bytes) -> np.ndarray:
        raise RuntimeError("nvjpegDecode failed: NVJPEG_STATUS_BAD_JPEG")

    proc.jpeg_on_device.decode = refuse
    png = encode(Image.fromarray(photos["coffee"]), "PNG")
    jpeg = photo_jpegs(photos, (320, 240))[0]
    with caplog.at_level("WARNING", logger="service.jpeg_tensor"):
        outs = [proc(jpeg), proc(jpeg), proc(png)]
    assert all(o.shape == (3, *bundled.preprocess.size) for o in outs)
    assert fallbacks == ["decoder", "decoder"]  # the PNG never reached the device path
    assert caplog.text.count("NVJPEG_STATUS_BAD_JPEG") == 1 and "clip_jpeg_fallbacks_total" in caplog.text


def test_cuda_decoding_needs_a_cuda_device():
    from pydantic import ValidationError

    from service.settings import Settings

    with pytest.raises(ValidationError, match="CLIP_JPEG_DECODE=cuda"):
        Settings(device="cpu", jpeg_decode="cuda")
