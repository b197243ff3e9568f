"""JPEG bytes -> model-ready pixels with torch ops on a device: nvJPEG decoding on CUDA (CLIP_JPEG_DECODE=cuda).

On a GPU host, decoding and resizing JPEGs on the CPU can cap throughput long before the encoder does; this
path decodes with nvJPEG (`torchvision.io.decode_jpeg(..., device="cuda")`) and resizes, crops and normalises
on the same device. It reproduces open_clip's "shortest" transform (bicubic resize with antialiasing, PIL's
kernel; rounding to 8 bits as PIL does; centre crop; mean/std); tests hold it within cosine 0.99 of the Pillow
path on real photos, running the same code with `device="cpu"`.

NOT YET RUN ON A GPU: no GPU was available while this was written; the CUDA device path is exercised only by
the `gpu`-marked tests (tests/gpu/, run by scripts/gpu_check.sh). Header checks (format, pixel cap) stay in
Pillow, before any decoding. Only JPEGs that nvJPEG decodes as Pillow would are sent to it (`device_refusal`):
YCbCr or grayscale (Pillow mode RGB or L; CMYK/YCCK fail in torchvision's own CUDA tests) with EXIF orientation 1
(torchvision applies EXIF orientation on CPU only; the CUDA decoder ignores it, so a phone photo tagged as
rotated would be embedded sideways). Everything else, and any JPEG nvJPEG refuses, goes to Pillow, counted in
clip_jpeg_fallbacks_total{reason}; the first fallback of each reason is logged.

GPU memory per preprocessing thread, for the largest image CLIP_MAX_IMAGE_PIXELS allows (40 MP): the decoded
uint8 image (3 bytes/pixel, 120 MB) and its float32 copy (12 bytes/pixel, 480 MB) are alive together, plus
the resize's intermediates (a few MB at 224 px) and nvJPEG's own buffers (about the decoded size again): about
0.75 GB at peak, returned to torch's caching allocator (not to the driver) afterwards. The same code on CPU
raised peak RSS by 431 MiB for a 7744x5163 JPEG (torch's share alone). With CLIP_PREPROCESS_WORKERS threads
decoding at once, reserve workers x 0.75 GB beside the model for 40 MP inputs (tests/gpu/test_nvjpeg.py
measures torch's peak on the GPU).
Images are decoded one per call, from the preprocessing threads. Handing nvJPEG a list of images per call
(batched decoding, which can also move Huffman decoding onto the GPU) is the next step once a GPU run shows
where the time goes.
"""

from __future__ import annotations

import logging
import threading
import warnings
from typing import Callable

import numpy as np
import torch
from PIL import ExifTags, Image

from models.preprocess import PreprocessConfig

log = logging.getLogger("service.jpeg_tensor")
DEVICE_MODES = ("RGB", "L")  # Pillow's modes for YCbCr and grayscale JPEGs; CMYK/YCCK JPEGs open as "CMYK"
# clip_jpeg_fallbacks_total{reason}: "orientation" (EXIF), "mode" (CMYK/YCCK), "decoder" (nvJPEG refused it);
# service/metrics.py JPEG_FALLBACK_REASONS lists the same three, exported at zero from the start

# torchvision 0.29 marks its image decoders deprecated in favour of TorchCodec, once per call. A process-wide
# filter: warnings.catch_warnings() is not thread-safe, and decoding runs in a thread pool.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)


class TensorJpegPreprocessor:
    """One JPEG -> float32 [3, H, W] numpy, computed on `device` (cuda: nvJPEG)."""

    def __init__(self, pre: PreprocessConfig, device: str) -> None:
        if pre.resize_mode != "shortest" or pre.size[0] != pre.size[1] or pre.interpolation != "bicubic":
            raise ValueError(f"JPEG decoding on {device} supports square inputs with bicubic shortest-side resize; "
                             f"this model uses {pre.size} {pre.interpolation} {pre.resize_mode} (use the cpu path)")
        from torchvision.transforms import InterpolationMode

        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("CLIP_JPEG_DECODE=cuda but torch sees no CUDA device")
        self.side = pre.size[0]
        self.bicubic = InterpolationMode.BICUBIC
        self.mean = torch.tensor(pre.mean, device=self.device).view(3, 1, 1)
        self.std = torch.tensor(pre.std, device=self.device).view(3, 1, 1)

    def __call__(self, data: bytes) -> np.ndarray:
        """Raises RuntimeError when the decoder cannot handle the file (callers fall back to Pillow).

        EXIF orientation is not applied, on any device: nvJPEG cannot, and `device_refusal` keeps rotated JPEGs
        away from here, so the CPU stand-in (device="cpu") behaves as the CUDA decoder does."""
        from torchvision.io import ImageReadMode, decode_jpeg
        from torchvision.transforms.v2 import functional as F

        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        img = decode_jpeg(raw, mode=ImageReadMode.RGB, device=self.device, apply_exif_orientation=False)
        with torch.inference_mode():
            x = F.resize(img.float(), [self.side], interpolation=self.bicubic, antialias=True)
            x = F.center_crop(x.clamp_(0, 255).round_(), [self.side, self.side])
            x = (x / 255.0 - self.mean) / self.std
            return x.cpu().numpy().astype(np.float32, copy=False)


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag of a parsed header (1 = upright, 2-8 = mirrored/rotated); no pixels decoded."""
    try:
        return int(img.getexif().get(ExifTags.Base.Orientation, 1) or 1)
    except Exception:  # noqa: BLE001 - any unreadable EXIF block: orientation unknown, Pillow decides
        return 0


def device_refusal(img: Image.Image) -> str | None:
    """Why this JPEG (header parsed by Pillow) must be decoded by Pillow rather than nvJPEG; None if it need not."""
    if img.mode not in DEVICE_MODES:
        return "mode"
    if exif_orientation(img) != 1:
        return "orientation"
    return None


class JpegOnDevice:
    """A JPEG whose header Pillow parsed -> float32 [3, H, W] from the device decoder, or None for Pillow to decode.

    `on_fallback(reason)` is called for every JPEG left to Pillow (the server counts them in
    clip_jpeg_fallbacks_total{reason}); the first of each reason is logged, with the decoder's error if any.
    """

    def __init__(self, pre: PreprocessConfig, device: str, on_fallback: Callable[[str], None] | None = None) -> None:
        self.device = device
        self.decode: Callable[[bytes], np.ndarray] = TensorJpegPreprocessor(pre, device)
        self.on_fallback = on_fallback
        self._logged: set[str] = set()
        self._lock = threading.Lock()  # called from every preprocessing thread

    def __call__(self, img: Image.Image, data: bytes) -> np.ndarray | None:
        reason, error = device_refusal(img), None
        if reason is None:
            try:
                return self.decode(data)
            except RuntimeError as exc:  # nvJPEG refused it (unusual sampling, corrupt data, ...)
                reason, error = "decoder", exc
        self._fallback(reason, img, error)
        return None

    def _fallback(self, reason: str, img: Image.Image, error: BaseException | None) -> None:
        if self.on_fallback is not None:
            self.on_fallback(reason)
        with self._lock:
            first = reason not in self._logged
            self._logged.add(reason)
        if first:  # once per reason: a stream of CMYK uploads must not flood the log
            log.warning("JPEG decoded by Pillow instead of %s (reason %s: mode %s, EXIF orientation %s)%s; further "
                        "ones are counted in clip_jpeg_fallbacks_total{reason=%r}", self.device, reason,
                        img.mode, exif_orientation(img), f": {error!r}" if error else "", reason)
