"""Every image mode is served as the README says, checked by embedding, not by status code: transparency is
composited on white, and 16-bit, palette, CMYK, LA, L and 1-bit images embed like their 8-bit RGB conversion.

Each case is a pair: what a client sends, and the 8-bit RGB PNG it must be equivalent to (built here with Pillow's
own conversions). Both go through the real server; their embeddings must agree to cosine >= 0.9999 (the same pixels
up to 8-bit rounding; see SAME for the large size), while the same picture composited on black is far off (0.97-0.98).
Two sizes: a small image, and a 2-megapixel one that a decoder may reduce before converting."""

from __future__ import annotations

import io
import struct
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.service.conftest import encode

DIFFERENT = 0.99  # a white and a black background must be further apart than this for the test to mean anything
SIZES = {"small": (96, 72), "large": (1600, 1200)}
# Least cosine of a case to its reference. Small: the same pixels up to 8-bit rounding (measured >= 0.9999999).
# Large: a decoder may shrink the image before converting it; box-reducing this picture by 2-8x before compositing
# or converting kept >= 0.99986 (1-bit) and >= 0.99999 (RGBA), while a black background gives 0.974 and a 1-bit
# image shrunk by nearest neighbour (Pillow resizes modes 1 and P only so) 0.92 at 2x, 0.55 at 8x.
SAME = {"small": 0.9999, "large": 0.999}


def picture(size: tuple[int, int]) -> Image.Image:
    """RGBA: opaque, half- and mostly-opaque shapes on a fully transparent background whose hidden colour is black."""
    w, h = size
    img = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    draw.ellipse([w * 0.1, h * 0.15, w * 0.5, h * 0.85], fill=(220, 30, 35, 255))
    draw.rectangle([w * 0.55, h * 0.1, w * 0.9, h * 0.5], fill=(35, 70, 225, 128))
    draw.polygon([(w * 0.55, h * 0.9), (w * 0.95, h * 0.9), (w * 0.75, h * 0.55)], fill=(40, 170, 60, 200))
    return img


def on(background: tuple[int, int, int], img: Image.Image) -> Image.Image:
    """`img` composited over an opaque background, as 8-bit RGB."""
    rgba = img.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (*background, 255)), rgba).convert("RGB")


def png48(rgb: Image.Image) -> bytes:
    """The picture as a 16-bit-per-channel RGB PNG (Pillow cannot write one): each 8-bit value v becomes 257 v."""
    arr = np.asarray(rgb, dtype=np.uint16) * 257  # [H, W, 3]
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in arr)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", rgb.width, rgb.height, 16, 2, 0, 0, 0)  # 16-bit, truecolour
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def palette_with_transparency(size: tuple[int, int]) -> Image.Image:
    """A palette image whose index 0 (black in the palette) is transparent."""
    w, h = size
    img = Image.new("P", size, 0)
    img.putpalette([0, 0, 0, 220, 30, 35, 35, 70, 225] + [0] * (256 * 3 - 9))
    draw = ImageDraw.Draw(img)
    draw.ellipse([w * 0.1, h * 0.15, w * 0.5, h * 0.85], fill=1)
    draw.rectangle([w * 0.55, h * 0.1, w * 0.9, h * 0.5], fill=2)
    img.info["transparency"] = 0
    return img


def cases(size: tuple[int, int]) -> dict[str, tuple[bytes, Image.Image]]:
    """name -> (what is sent, the RGB image it must embed like)."""
    rgba = picture(size)
    rgb = on((255, 255, 255), rgba)
    grey = rgb.convert("L")
    dim = on((128, 128, 128), rgba).convert("L")  # at most 128: 16 bits are scaled by 65535, not by the brightest
    grey16 = Image.fromarray(np.asarray(dim, dtype=np.uint16) * 257)  # mode I;16
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    one_bit = rgb.convert("1")  # dithered
    cmyk = rgb.convert("CMYK")
    clear = palette_with_transparency(size)
    out = {
        "rgba_png": (encode(rgba, "PNG"), on((255, 255, 255), rgba)),
        "rgba_webp_lossless": (encode(rgba, "WEBP", lossless=True, exact=True), on((255, 255, 255), rgba)),
        "la_png": (encode(rgba.convert("LA"), "PNG"), on((255, 255, 255), rgba.convert("LA"))),
        "palette_transparent_png": (encode(clear, "PNG", transparency=0), on((255, 255, 255), clear)),
        "palette_png": (encode(palette, "PNG"), palette.convert("RGB")),
        "one_bit_png": (encode(one_bit, "PNG"), one_bit.convert("RGB")),
        "grey_png": (encode(grey, "PNG"), grey.convert("RGB")),
        "grey16_png": (encode(grey16, "PNG"), dim.convert("RGB")),
        "grey16_tiff": (encode(grey16, "TIFF"), dim.convert("RGB")),
        "rgb48_png": (png48(rgb), rgb),
        "cmyk_tiff": (encode(cmyk, "TIFF"), cmyk.convert("RGB")),
    }
    if max(size) < 128:  # larger JPEGs may be decoded at reduced scale: that is test_parity's subject, not this one
        jpeg = encode(cmyk, "JPEG", quality=95)
        out["cmyk_jpeg"] = (jpeg, Image.open(io.BytesIO(jpeg)).convert("RGB"))
    return out


def embed(server, images: list[bytes]) -> np.ndarray:
    r = httpx.post(server.url + "/embed/image", files=[("file", (f"{i}", b)) for i, b in enumerate(images)],
                   timeout=120)
    assert r.status_code == 200, r.text[:300]
    return np.array(r.json()["embeddings"])  # L2-normalised rows


@pytest.fixture(scope="module")
def served(server):
    """served(size) -> per case, the cosine of the served embeddings of what is sent and of its reference; and the
    cosine of the picture's white and black composites (what a black background would have scored). Cached."""
    results: dict[str, tuple[dict[str, float], float]] = {}

    def get(size_name: str) -> tuple[dict[str, float], float]:
        if size_name not in results:
            size = SIZES[size_name]
            pairs = cases(size)
            sent = embed(server, [s for s, _ in pairs.values()])
            refs = embed(server, [encode(ref, "PNG") for _, ref in pairs.values()])
            white, black = embed(server, [encode(on(c, picture(size)), "PNG") for c in ((255, 255, 255), (0, 0, 0))])
            results[size_name] = dict(zip(pairs, (sent * refs).sum(axis=1))), float(white @ black)
        return results[size_name]

    return get


@pytest.mark.parametrize("size", list(SIZES))
def test_white_and_black_backgrounds_are_told_apart(served, size):
    _, white_vs_black = served(size)
    assert white_vs_black < DIFFERENT, f"cosine {white_vs_black:.4f}: this picture cannot show the background"


CASES = [(size, case) for size in SIZES for case in cases((8, 8)) if size == "small" or case != "cmyk_jpeg"]


@pytest.mark.parametrize("size,case", CASES)
def test_each_mode_embeds_like_its_8_bit_rgb_conversion(served, size, case):
    cosines, _ = served(size)
    assert cosines[case] >= SAME[size], f"{case}: cosine {cosines[case]:.5f} to its RGB reference, under {SAME[size]}"
