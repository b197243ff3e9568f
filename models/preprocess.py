"""The image preprocessing a model expects: plain typed data (also written into export manifests), and that
preprocessing itself in PIL + numpy (`eval_pixels`), equal to open_clip's torchvision eval transform.

Imports neither torch nor open_clip: the server preprocesses with `eval_pixels` whatever the backend, and only
`eval_transform` (open_clip's own transform, for training and for checking `eval_pixels`) needs the `torch` extra.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

# open_clip.constants, copied so that reading a config needs no open_clip (tests/models/test_preprocess.py checks)
OPENAI_DATASET_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_DATASET_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class PreprocessConfig:
    """open_clip's eval transform: resize (shortest side, bicubic), centre crop, RGB, mean/std."""

    size: tuple[int, int] = (224, 224)  # (height, width) fed to the image tower
    mean: tuple[float, float, float] = field(default=OPENAI_DATASET_MEAN)
    std: tuple[float, float, float] = field(default=OPENAI_DATASET_STD)
    interpolation: str = "bicubic"  # "bicubic" | "bilinear" | "nearest"
    resize_mode: str = "shortest"  # "shortest" (resize + centre crop) | "longest" (pad) | "squash"
    fill_color: int = 0  # padding value for resize_mode="longest"

    @property
    def height(self) -> int:
        return self.size[0]

    @property
    def width(self) -> int:
        return self.size[1]

    @classmethod
    def from_open_clip(cls, cfg: dict[str, Any]) -> "PreprocessConfig":
        size = cfg.get("size", 224)
        size = (size, size) if isinstance(size, int) else tuple(size)
        return cls(size=size, mean=tuple(cfg.get("mean", OPENAI_DATASET_MEAN)),
                   std=tuple(cfg.get("std", OPENAI_DATASET_STD)),
                   interpolation=cfg.get("interpolation", "bicubic"),
                   resize_mode=cfg.get("resize_mode", "shortest"), fill_color=int(cfg.get("fill_color", 0)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def to_open_clip(self) -> dict[str, Any]:
        """The dict open_clip keeps in open_clip_config.json's preprocess_cfg."""
        d = self.to_dict()
        d["size"] = self.size[0] if self.size[0] == self.size[1] else list(self.size)
        return d


def eval_transform(pre: PreprocessConfig):
    """open_clip's own inference transform for this config (PIL image -> float tensor [3, H, W])."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = PreprocessCfg(size=pre.size, mean=pre.mean, std=pre.std, interpolation=pre.interpolation,
                        resize_mode=pre.resize_mode, fill_color=pre.fill_color)
    return image_transform_v2(cfg, is_train=False)


def eval_pixels(img: Image.Image, pre: PreprocessConfig) -> np.ndarray:
    """PIL image -> float32 [3, H, W]: open_clip's eval transform (`eval_transform`) in PIL + numpy.

    The same Pillow resize call with the same output size as torchvision makes, then the same crop / pad
    arithmetic, /255 and mean/std in float32: equal to open_clip's result up to float rounding (tests hold it to
    1e-5 in normalised units on real photos and odd sizes). It is `eval_uint8` then `normalise`: the server's
    front-end processes run the first, its engine the second (service/engine_server.py)."""
    return normalise(eval_uint8(img, pre)[None], pre)[0]


def eval_uint8(img: Image.Image, pre: PreprocessConfig) -> np.ndarray:
    """PIL image -> uint8 [H, W, 3]: the eval transform's resize and crop / pad, before any arithmetic (a quarter
    of float32's bytes, what crosses between the server's processes)."""
    size = _resized_size(img.size, pre)
    if size != img.size:  # torchvision returns an image of the asked size unchanged
        img = img.resize(size, _pil_filter(pre))
    img = _crop_inside(img, pre.size)  # a long strip resized is still huge: crop before any copy of it
    rgb = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))  # [h, w, 3] uint8
    fill = pre.fill_color if pre.resize_mode == "longest" else 0  # torchvision's CenterCrop pads with 0
    return center_crop_or_pad(rgb, pre.size, fill)  # [H, W, 3]


def normalise(rgb: np.ndarray, pre: PreprocessConfig) -> np.ndarray:
    """uint8 [B, H, W, 3] -> float32 [B, 3, H, W]: ToTensor's /255, then Normalize's subtract and divide, in
    float32 (the one place this arithmetic is written; a device version must match it).

    A uint8 channel has 256 values, so the arithmetic is done once per value (`_channel_tables`) and each pixel
    looks its value up: the same float32 operations on the same inputs, so the same bits, in one pass over the
    batch instead of four (about 4x faster; it is most of an engine process's CPU per image on the CPU)."""
    tables = _channel_tables(tuple(pre.mean), tuple(pre.std))  # [3, 256]
    planes = rgb.transpose(0, 3, 1, 2)  # [B, 3, H, W] view, no copy
    out = np.empty(planes.shape, dtype=np.float32)
    for c in range(3):
        out[:, c] = tables[c][planes[:, c]]
    return out


@functools.lru_cache(maxsize=8)
def _channel_tables(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """float32 [3, 256]: channel c's normalised value of each uint8 value, as ToTensor then Normalize compute it."""
    x = np.arange(256, dtype=np.uint8).astype(np.float32)[None, :] / np.float32(255)  # [1, 256], as ToTensor
    m = np.asarray(mean, dtype=np.float32).reshape(3, 1)
    s = np.asarray(std, dtype=np.float32).reshape(3, 1)
    tables = (x - m) / s  # as Normalize: subtract, then divide, in float32
    tables.setflags(write=False)
    return tables


def _pil_filter(pre: PreprocessConfig) -> Image.Resampling:
    """open_clip: bilinear when asked, bicubic otherwise; its non-square "shortest" resize is always bicubic."""
    if pre.interpolation == "bilinear" and not (pre.resize_mode == "shortest" and pre.size[0] != pre.size[1]):
        return Image.Resampling.BILINEAR
    return Image.Resampling.BICUBIC


def _resized_size(size: tuple[int, int], pre: PreprocessConfig) -> tuple[int, int]:
    """(width, height) after open_clip's resize step, computed as torchvision and open_clip compute it."""
    w, h = size
    th, tw = pre.size
    if pre.resize_mode == "squash":
        return tw, th
    if pre.resize_mode == "shortest" and th == tw:  # torchvision Resize(int): shortest side, long side truncated
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(th * long / short)
        return (th, new_long) if w <= h else (new_long, th)
    # open_clip's ResizeKeepRatio: "longest" fits the longest side, non-square "shortest" the shortest
    ratio_h, ratio_w = h / th, w / tw
    ratio = max(ratio_h, ratio_w) if pre.resize_mode == "longest" else min(ratio_h, ratio_w)
    # at least one pixel: open_clip's own transform raises on a 1000x2 image in "longest" mode (a zero side)
    return max(1, round(w / ratio)), max(1, round(h / ratio))


def _crop_inside(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Crop the centre of each side longer than the target, as `center_crop_or_pad` would, in PIL (no array yet).

    A side already within the target is left for `center_crop_or_pad` to pad; on the cropped side the offset is
    the same rounding, so the pixels kept are the same ones."""
    ch, cw = size
    w, h = img.size
    top = int(round((h - ch) / 2.0)) if h > ch else 0
    left = int(round((w - cw) / 2.0)) if w > cw else 0
    box = (left, top, left + min(w, cw), top + min(h, ch))
    return img if box == (0, 0, w, h) else img.crop(box)


def center_crop_or_pad(rgb: np.ndarray, size: tuple[int, int], fill: int = 0) -> np.ndarray:
    """[h, w, C] -> [H, W, C]: pad with `fill` where smaller (left/top get the smaller half), then crop the centre
    (offsets rounded as torchvision's center_crop and open_clip's center_crop_or_pad round them)."""
    ch, cw = size
    h, w = rgb.shape[:2]
    if ch > h or cw > w:
        top, left = max(0, (ch - h) // 2), max(0, (cw - w) // 2)
        bottom, right = max(0, (ch - h + 1) // 2), max(0, (cw - w + 1) // 2)
        rgb = np.pad(rgb, ((top, bottom), (left, right), (0, 0)), constant_values=fill)
        h, w = rgb.shape[:2]
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return rgb[top:top + ch, left:left + cw]
