"""Image bytes -> model-ready pixels, safely.

Only JPEG, PNG, WebP, GIF, BMP and TIFF are decoded; the pixel count is checked from the header before any
decoding; decompression-bomb warnings are errors; large images are reduced by an integer factor before anything
else (JPEG while decoding, others right after), so no full-size copy is ever widened; EXIF orientation is
applied; transparency is composited on white; every mode becomes RGB; animations give their first frame.
Preprocessing is the model's own open_clip eval transform (shortest-side bicubic resize, centre crop, mean/std),
computed in PIL + numpy (models.preprocess.eval_pixels) for every backend, so serving needs no torch.
"""

from __future__ import annotations

import io
import warnings
from typing import Callable

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from models.preprocess import PreprocessConfig, eval_pixels, eval_uint8
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


# The box reduction keeps the shortest side >= 4x the model input and leaves the rest to the transform's bicubic
# filter. Bundled model, real photos at 1x, 3x and 8x as RGB/RGBA/LA/16-bit/palette/CMYK/1-bit: cosine to full-size
# conversion >= 0.9965 (mostly >= 0.999); keeping only 2x gave 0.86 on a dithered 1-bit photo, 1x 0.958 on LA.
# Memory is the same either way: the reduced copy is small next to the decoded image.
BOX_REDUCE_MARGIN = 4


def reduce_factor(size: tuple[int, int], target: int | None) -> int:
    """The integer box-reduction factor that keeps the shortest side >= BOX_REDUCE_MARGIN x target (1: none)."""
    return max(1, min(size) // (BOX_REDUCE_MARGIN * target)) if target else 1


_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
                7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}  # as ImageOps.exif_transpose
_WHITE = (255, 255, 255, 255)
# 16-bit grey -> 8-bit: v / 65535 * 255, floored, as a 64 KiB table (no float copy of the image)
_LUT16 = np.clip(np.arange(65536, dtype=np.float64) / 65535.0 * 255.0, 0, 255).astype(np.uint8)
# Rows per band: about a million pixels, so one band's copies (crop, 4-byte pixels, composite) stay near 16 MB
# whatever the image size.
BAND_PIXELS = 1_000_000


def _narrow(band: Image.Image, top: float) -> Image.Image:
    """One band of any mode -> L, LA, RGB or RGBA with 8 bits per channel, the meaning unchanged: 16-bit scaled
    0..65535 -> 0..255, 32-bit int/float scaled 0..top (the whole image's maximum), palette transparency kept
    as alpha, CMYK/YCbCr/LAB/HSV/1-bit converted."""
    mode = band.mode
    if mode.startswith("I;16"):
        return Image.fromarray(_LUT16[np.asarray(band)], "L")
    if mode in ("I", "F"):
        arr = np.asarray(band, dtype=np.float64)  # one band, not the image: ~16 MB
        return Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), "L")
    if mode in ("L", "LA", "RGB", "RGBA"):
        return band
    if mode == "La":
        return band.convert("LA")  # Pillow converts La to nothing else
    if mode in ("PA", "RGBa") or (mode == "P" and "transparency" in band.info):
        return band.convert("RGBA")
    return band.convert("L" if mode == "1" else "RGB")


def _flatten(band: Image.Image) -> Image.Image:
    """L/LA/RGB/RGBA -> RGB, transparency composited on white."""
    if band.mode in ("LA", "RGBA"):
        rgba = band.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    return band.convert("RGB") if band.mode != "RGB" else band


def to_rgb(img: Image.Image, factor: int = 1) -> Image.Image:
    """Any mode -> RGB, box-reduced by an integer `factor` (1: full size): transparency over white, 16-bit scaled
    to 8-bit, CMYK/P/1/L/LA converted.

    Memory: the image is converted in horizontal bands, each reduced *before* it is widened (to 4-byte pixels,
    to RGBA for compositing), so the peak is the decoded image + the reduced result + one band's copies, never
    a full-size converted copy (a 40 MP 16-bit PNG took 1.1 GB when converted whole through float64). Reducing
    RGBA/LA averages premultiplied colours (Pillow's reduce), so compositing after it equals compositing before.
    """
    if img.mode == "RGB" and factor == 1:
        return img
    w, h = img.size
    top = 1.0
    if img.mode in ("I", "F"):
        top = max(1.0, float(img.getextrema()[1]))  # scale by the whole image's maximum, not each band's
    rows = max(factor, BAND_PIXELS // max(1, w) // factor * factor)  # a multiple of factor: blocks never split
    out = Image.new("RGB", (-(-w // factor), -(-h // factor)))
    for y in range(0, h, rows):
        band = _narrow(img.crop((0, y, w, min(h, y + rows))), top)
        if factor > 1:
            band = band.reduce(factor)
        out.paste(_flatten(band), (0, y // factor))
    return out


def decode(data: bytes, max_pixels: int, reduce_for: int | None = None,
           img: Image.Image | None = None) -> Image.Image:
    """Bytes -> upright RGB PIL image (first frame). `reduce_for`: the model's input side, for reduced decoding
    (JPEG draft down to it, then a box reduction of any format down to BOX_REDUCE_MARGIN x it); `img`: the
    result of open_image(data) when the caller has it already."""
    if img is None:
        img = open_image(data, max_pixels)
    if reduce_for:
        draft_for(img, reduce_for)
    try:
        img.seek(0)
        img.load()
        method = _ORIENTATION.get(img.getexif().get(ExifTags.Base.Orientation, 1))
        rgb = to_rgb(img, reduce_factor(img.size, reduce_for))
        return rgb.transpose(method) if method is not None else rgb  # on the small image: no full-size copy
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise PayloadTooLarge(f"image looks like a decompression bomb: {exc}")
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise BadInput(f"image data is truncated or corrupt: {exc}")


class ImagePreprocessor:
    """Bytes -> float32 [3, H, W] exactly as the model's own open_clip transform produces; with `as_uint8`, the
    same pixels before the arithmetic, uint8 [H, W, 3] (what a front-end process sends to the engine process)."""

    def __init__(self, pre: PreprocessConfig, max_pixels: int, reduced_jpeg_decode: bool = True,
                 jpeg_decode: str = "cpu", on_jpeg_fallback: Callable[[str], None] | None = None,
                 as_uint8: bool = False):
        self.pre, self.max_pixels, self.as_uint8 = pre, max_pixels, as_uint8
        Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow warns (= errors, see above) past this; one cap per process
        self.reduce_for = min(pre.size) if reduced_jpeg_decode else None
        self.jpeg_on_device: Callable[[Image.Image, bytes], np.ndarray | None] | None = None
        if jpeg_decode != "cpu":  # CLIP_JPEG_DECODE=cuda: nvJPEG, see service/jpeg_tensor.py
            from service.jpeg_tensor import JpegOnDevice

            self.jpeg_on_device = JpegOnDevice(pre, jpeg_decode, on_jpeg_fallback)

    def __call__(self, data: bytes) -> np.ndarray:
        return self.finish(self.open(data), data)

    def open(self, data: bytes) -> Image.Image:
        """The header only: format and pixel cap checked, no pixels decoded (BadInput / 413 / 415 as decoding)."""
        return open_image(data, self.max_pixels)

    def finish(self, img: Image.Image, data: bytes) -> np.ndarray:
        """The pixels of an image `open` parsed: what __call__ returns."""
        if self.jpeg_on_device is not None and img.format == "JPEG":
            pixels = self.jpeg_on_device(img, data)  # None: rotated, CMYK or refused, Pillow decodes it
            if pixels is not None:
                return pixels
        img = decode(data, self.max_pixels, self.reduce_for, img)
        if self.as_uint8:
            return eval_uint8(img, self.pre)  # uint8 [H, W, 3]
        return eval_pixels(img, self.pre)  # float32 [3, H, W]
