"""Image bytes -> model-ready pixels, safely.

Only JPEG, PNG, WebP, GIF, BMP and TIFF are decoded; the pixel count is checked from the header before any
decoding; decompression-bomb warnings are errors; EXIF orientation is applied; transparency is composited on
white; every mode becomes RGB; animations give their first frame. Preprocessing is the model's own open_clip
transform (shortest-side bicubic resize, centre crop, mean/std).
"""

from __future__ import annotations

import io
import warnings
from typing import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from models.preprocess import PreprocessConfig, eval_transform
from service.errors import BadInput, PayloadTooLarge, UnsupportedMedia

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# Pillow's decompression-bomb warning is an error here, process-wide: a global filter, because
# warnings.catch_warnings() is not thread-safe and decoding runs in a thread pool. Pillow's own limit
# (Image.MAX_IMAGE_PIXELS) is set to CLIP_MAX_IMAGE_PIXELS by ImagePreprocessor; open_image also checks it.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)

_OTHER_SIGNATURES = {  # recognisable but unsupported: 415, not 400
    b"%PDF": "PDF", b"<svg": "SVG", b"<?xml": "XML/SVG", b"<!DOCTYPE svg": "SVG", b"\x00\x00\x00\x0cjP": "JPEG 2000",
    b"\xff\x4f\xff\x51": "JPEG 2000", b"8BPS": "PSD", b"\x00\x00\x01\x00": "ICO", b"icns": "ICNS",
    b"%!PS": "PostScript", b"\xff\x0a": "JPEG XL", b"\x00\x00\x00\x0cJXL ": "JPEG XL", b"DDS ": "DDS",
    b"\x76\x2f\x31\x01": "OpenEXR", b"gimp xcf": "XCF",
}


def _sniff_unsupported(data: bytes) -> str | None:
    head = data[:64].removeprefix(b"\xef\xbb\xbf").lstrip()  # a UTF-8 BOM may precede SVG/XML
    for sig, name in _OTHER_SIGNATURES.items():
        if head.startswith(sig):
            return name
    if b"ftypheic" in data[:32] or b"ftypavif" in data[:32]:
        return "HEIC/AVIF"
    return None


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Parse the header only; refuse unsupported formats and oversized images before decoding."""
    if not data:
        raise BadInput("empty image")
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        other = _sniff_unsupported(data)
        if other:
            raise UnsupportedMedia(f"{other} images are not supported; send JPEG, PNG, WebP, GIF, BMP or TIFF")
        raise BadInput("not a decodable image (supported: JPEG, PNG, WebP, GIF, BMP, TIFF)")
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise PayloadTooLarge(f"image refused as a decompression bomb (CLIP_MAX_IMAGE_PIXELS): {exc}")
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadInput(f"not a decodable image: {exc}")
    w, h = img.size
    if w * h > max_pixels:
        raise PayloadTooLarge(f"image is {w}x{h} = {w * h:,} pixels; the limit is {max_pixels:,} "
                              f"(CLIP_MAX_IMAGE_PIXELS)")
    if w < 1 or h < 1:
        raise BadInput(f"image has no pixels ({w}x{h})")
    return img


def draft_for(img: Image.Image, target: int) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale while the shortest side stays >= target, so the resize after
    it only shrinks. 1920x1080 for a 224 model decodes at 1/4: one-thread preprocessing 3.1-4.2x faster than full
    decoding at cosine >= 0.9999 on real photos (keeping >= 2x target allowed only 1/2: 2.1x).
    docs/benchmarks/README.md"""
    if img.format != "JPEG":
        return
    w, h = img.size
    scale = max(1, min(w, h) // target)
    if scale >= 2:
        img.draft("RGB", (max(1, w // scale), max(1, h // scale)))


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode -> RGB: transparency over white, 16-bit scaled to 8-bit, CMYK/P/1/L/LA converted."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(1.0, float(arr.max()))
        img = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


def decode(data: bytes, max_pixels: int, reduce_for: int | None = None,
           img: Image.Image | None = None) -> Image.Image:
    """Bytes -> upright RGB PIL image (first frame). `reduce_for`: target side for reduced JPEG decoding;
    `img`: the result of open_image(data) when the caller has it already."""
    if img is None:
        img = open_image(data, max_pixels)
    if reduce_for:
        draft_for(img, reduce_for)
    try:
        img.seek(0)
        img.load()
        img = ImageOps.exif_transpose(img) or img
        return to_rgb(img)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise PayloadTooLarge(f"image looks like a decompression bomb: {exc}")
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise BadInput(f"image data is truncated or corrupt: {exc}")


class ImagePreprocessor:
    """Bytes -> float32 [3, H, W] exactly as the model's own open_clip transform produces."""

    def __init__(self, pre: PreprocessConfig, max_pixels: int, reduced_jpeg_decode: bool = True,
                 jpeg_decode: str = "cpu", on_jpeg_fallback: Callable[[str], None] | None = None):
        self.pre, self.max_pixels = pre, max_pixels
        Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow warns (= errors, see above) past this; one cap per process
        self.reduce_for = min(pre.size) if reduced_jpeg_decode else None
        self._transform: Callable = eval_transform(pre)
        self.jpeg_on_device: Callable[[Image.Image, bytes], np.ndarray | None] | None = None
        if jpeg_decode != "cpu":  # CLIP_JPEG_DECODE=cuda: nvJPEG, see service/jpeg_tensor.py
            from service.jpeg_tensor import JpegOnDevice

            self.jpeg_on_device = JpegOnDevice(pre, jpeg_decode, on_jpeg_fallback)

    def __call__(self, data: bytes) -> np.ndarray:
        img = open_image(data, self.max_pixels)  # format and pixel cap from the header, before any decoding
        if self.jpeg_on_device is not None and img.format == "JPEG":
            pixels = self.jpeg_on_device(img, data)  # None: rotated, CMYK or refused, Pillow decodes it
            if pixels is not None:
                return pixels
        img = decode(data, self.max_pixels, self.reduce_for, img)
        return self._transform(img).numpy().astype(np.float32, copy=False)  # [3, H, W]
