"""Reduce first, convert after: every mode keeps its meaning, and embeddings stay close to full-size conversion."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import service.images as images
from models.preprocess import eval_transform
from service.images import ImagePreprocessor, decode, to_rgb
from tests.service.conftest import encode


def _full_size_rgb(img: Image.Image) -> Image.Image:
    """The meaning of each mode, converted the plain way at full size (what the server did before reducing)."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(1.0, float(arr.max()))
        img = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode == "La":
        img = img.convert("LA")  # Pillow converts La to nothing else
    if img.mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB")


def _modes(w: int = 97, h: int = 61) -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    u8 = lambda: rng.integers(0, 256, (h, w), dtype=np.uint8)  # noqa: E731
    u16 = rng.integers(0, 65536, (h, w), dtype=np.uint16)
    rgb = Image.merge("RGB", [Image.fromarray(u8()) for _ in range(3)])
    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray(u8()))
    palette = rgb.quantize(32)
    palette.info["transparency"] = 5
    return {
        "RGB": rgb, "RGBA": rgba, "RGBa": rgba.convert("RGBa"), "LA": rgba.convert("LA"),
        "La": rgba.convert("LA").convert("La"), "PA": rgb.quantize(32).convert("PA"), "P": rgb.quantize(32),
        "P+transparency": palette, "L": rgb.convert("L"), "1": rgb.convert("1"), "CMYK": rgb.convert("CMYK"),
        "YCbCr": rgb.convert("YCbCr"),
        "I;16": Image.fromarray(u16), "I;16B": Image.frombytes("I;16B", (w, h), u16.astype(">u2").tobytes()),
        "I": Image.fromarray(rng.integers(-5, 70000, (h, w), dtype=np.int32)),
        "F": Image.fromarray(rng.normal(100, 50, (h, w)).astype(np.float32)),
    }


@pytest.fixture(autouse=True)
def small_bands(monkeypatch):
    """Bands of ~500 pixels, so these small images cross many band edges (with a remainder band)."""
    monkeypatch.setattr(images, "BAND_PIXELS", 500)


@pytest.mark.parametrize("name", list(_modes()))
def test_every_mode_converts_as_at_full_size(name):
    img = _modes()[name]
    got = to_rgb(img)
    assert got.mode == "RGB" and got.size == img.size
    assert np.array_equal(np.asarray(got), np.asarray(_full_size_rgb(img))), name


@pytest.mark.parametrize("factor", [2, 3, 7])
@pytest.mark.parametrize("name", list(_modes()))
def test_reducing_first_equals_reducing_the_converted_image(name, factor):
    """Box reduction before conversion = after it: alpha is averaged premultiplied, so compositing commutes
    (up to rounding of the premultiplied values); 16-bit, palette and CMYK are narrowed before averaging."""
    img = _modes()[name]
    got = np.asarray(to_rgb(img, factor), dtype=np.int16)
    want = np.asarray(_full_size_rgb(img).reduce(factor), dtype=np.int16)
    assert got.shape == want.shape
    # averaging premultiplied alpha rounds differently: a level or two where pixels are transparent
    assert np.abs(got - want).max() <= 2, (name, factor, np.abs(got - want).max())
    assert np.abs(got - want).mean() <= 1.0, (name, factor)


def test_values_keep_their_meaning():
    grey16 = Image.fromarray(np.array([[0, 257 * 128, 65535]], dtype=np.uint16))
    assert np.asarray(to_rgb(grey16))[0, :, 0].tolist() == [0, 128, 255]  # 0..65535 -> 0..255
    rgba = Image.fromarray(np.array([[[0, 0, 0, 0], [0, 0, 0, 255], [0, 0, 0, 128]]], dtype=np.uint8), "RGBA")
    assert np.asarray(to_rgb(rgba))[0, :, 0].tolist() == [255, 0, 127]  # on white, not on black
    assert np.asarray(to_rgb(rgba.resize((30, 30), Image.NEAREST), 3))[0, 0].tolist() == [255, 255, 255]


def test_decoding_reduces_to_four_times_the_model_input_then_orients():
    """A 2000x1000 image for a 224 model is box-reduced by 1000 // 896 = 1, for a 64 model by 1000 // 256 = 3;
    EXIF orientation applies after."""
    img = Image.merge("RGB", [Image.linear_gradient("L").resize((2000, 1000))] * 3)
    assert decode(encode(img, "PNG"), 40_000_000, reduce_for=224).size == (2000, 1000)
    assert decode(encode(img, "PNG"), 40_000_000, reduce_for=64).size == (667, 334)
    assert decode(encode(img, "PNG"), 40_000_000, reduce_for=None).size == (2000, 1000)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = decode(encode(img, "PNG", exif=exif), 40_000_000, reduce_for=64)
    assert out.size == (334, 667)
    assert np.array_equal(np.asarray(out), np.asarray(img.reduce(3).transpose(Image.Transpose.ROTATE_270)))


def _variants(photo: np.ndarray) -> dict[str, bytes]:
    im = Image.fromarray(photo).resize((photo.shape[1] * 3, photo.shape[0] * 3), Image.BICUBIC)
    w, h = im.size
    yy, xx = np.mgrid[:h, :w]
    alpha = (255 * np.clip(1.3 - np.hypot(xx / w - .5, yy / h - .5) * 2, 0, 1)).astype(np.uint8)
    rgba = im.copy()
    rgba.putalpha(Image.fromarray(alpha))
    grey16 = Image.fromarray(np.asarray(im.convert("L")).astype(np.uint16) * 257 + (xx % 7).astype(np.uint16))
    fast = {"compress_level": 1}
    return {"RGBA": encode(rgba, "PNG", **fast), "LA": encode(rgba.convert("LA"), "PNG", **fast),
            "I;16": encode(grey16, "PNG", **fast), "P": encode(im.quantize(256), "PNG", **fast),
            "CMYK": encode(im.convert("CMYK"), "TIFF"), "1": encode(im.convert("1"), "PNG", **fast)}


def test_real_photos_reduced_first_stay_close_to_full_size_conversion(bundled, photos):
    """As reduced JPEG decoding: embeddings within cosine 0.99 of converting at full size (measured >= 0.998)."""
    tf = eval_transform(bundled.preprocess)
    pre = ImagePreprocessor(bundled.preprocess, 40_000_000)
    keys, full, reduced = [], [], []
    for name, photo in photos.items():
        for mode, blob in _variants(photo).items():
            keys.append(mode)
            full.append(tf(_full_size_rgb(Image.open(io.BytesIO(blob)))).numpy())
            reduced.append(pre(blob))
    with torch.no_grad():
        e = bundled.model.encode_image(torch.from_numpy(np.stack(full + reduced)), normalize=True).numpy()
    cos = (e[:len(keys)] * e[len(keys):]).sum(axis=1)
    worst = {mode: float(min(c for k, c in zip(keys, cos) if k == mode)) for mode in set(keys)}
    assert min(worst.values()) >= 0.99, worst
