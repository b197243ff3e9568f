"""JPEG bytes -> model-ready pixels with torch ops on a device: nvJPEG decoding on CUDA (CLIP_JPEG_DECODE=cuda).

On a GPU host, decoding and resizing JPEGs on the CPU can cap throughput long before the encoder does; this
path decodes with nvJPEG (`torchvision.io.decode_jpeg(..., device="cuda")`) and resizes, crops and normalises
on the same device. It reproduces open_clip's "shortest" transform (bicubic resize with antialiasing, PIL's
kernel; rounding to 8 bits as PIL does; centre crop; mean/std); tests hold it within cosine 0.99 of the Pillow
path on real photos, running the same code with `device="cpu"`.

NOT YET RUN ON A GPU: no GPU was available while this was written; the CUDA device path is exercised only by
the `gpu`-marked tests (scripts/gpu_check.sh). Header checks (format, pixel cap) stay in Pillow, before any
decoding; a JPEG nvJPEG refuses (CMYK, unusual sampling) falls back to the Pillow path, which gives the error.
Images are decoded one per call, from the preprocessing threads. Handing nvJPEG a list of images per call
(batched decoding, which can also move Huffman decoding onto the GPU) is the next step once a GPU run shows
where the time goes.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from models.preprocess import PreprocessConfig

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
        """Raises RuntimeError when the decoder cannot handle the file (callers fall back to Pillow)."""
        from torchvision.io import ImageReadMode, decode_jpeg
        from torchvision.transforms.v2 import functional as F

        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        img = decode_jpeg(raw, mode=ImageReadMode.RGB, device=self.device, apply_exif_orientation=True)
        with torch.inference_mode():
            x = F.resize(img.float(), [self.side], interpolation=self.bicubic, antialias=True)
            x = F.center_crop(x.clamp_(0, 255).round_(), [self.side, self.side])
            x = (x / 255.0 - self.mean) / self.std
            return x.cpu().numpy().astype(np.float32, copy=False)
