"""models.preprocess.eval_pixels (PIL + numpy, what the server runs for every backend) equals open_clip's torchvision
eval transform on real photos and odd sizes, in every resize mode; and the module loads no torch or open_clip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.preprocess import (OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, PreprocessConfig, eval_pixels, eval_transform,
                               eval_uint8, normalise)

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = sorted((ROOT / "export" / "parity_images").glob("*.jpg"))
ODD_SIZES = [(1, 1), (3, 1000), (1000, 3), (223, 225), (225, 223), (224, 224), (2, 3), (97, 5), (640, 480), (300, 200)]
CONFIGS = {
    "shortest": PreprocessConfig(),
    "shortest-64": PreprocessConfig(size=(64, 64)),
    "shortest-bilinear": PreprocessConfig(interpolation="bilinear"),
    "shortest-non-square": PreprocessConfig(size=(160, 224)),
    "longest": PreprocessConfig(resize_mode="longest", fill_color=128),
    "longest-non-square": PreprocessConfig(size=(224, 160), resize_mode="longest"),
    "squash": PreprocessConfig(resize_mode="squash"),
    "squash-bilinear": PreprocessConfig(size=(192, 256), resize_mode="squash", interpolation="bilinear"),
}


def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in ODD_SIZES]
    return [Image.open(p).convert("RGB") for p in PHOTOS] + noise


@pytest.mark.parametrize("name", list(CONFIGS))
def test_equals_open_clips_transform_on_photos_and_odd_sizes(name):
    pre, transform = CONFIGS[name], eval_transform(CONFIGS[name])
    assert len(PHOTOS) >= 4
    compared = 0
    for img in images():
        ours = eval_pixels(img, pre)
        assert ours.dtype == np.float32 and ours.shape == (3, *pre.size)
        try:
            theirs = transform(img).numpy()
        except ValueError:  # open_clip's own transform fails on a 1000x3 image in "longest" mode (a zero side)
            assert name.startswith("longest") and min(img.size) <= 3
            continue
        assert np.abs(ours - theirs).max() <= 1e-5, (name, img.size)
        compared += 1
    assert compared >= len(PHOTOS) + len(ODD_SIZES) - 2


@pytest.mark.parametrize("name", ["shortest", "longest", "squash-bilinear"])
def test_uint8_then_normalise_as_a_batch_is_the_float_path_bit_for_bit(name):
    """The split server decodes to uint8 in one process and normalises whole batches in another: the result must be
    the per-image float arithmetic exactly (ToTensor's /255, then subtract mean, divide by std, in float32)."""
    pre = CONFIGS[name]
    imgs = images()
    rgb = np.stack([eval_uint8(img, pre) for img in imgs])  # [B, H, W, 3]
    assert rgb.dtype == np.uint8 and rgb.shape == (len(imgs), *pre.size, 3)
    batch = normalise(rgb, pre)  # [B, 3, H, W]
    mean = np.asarray(pre.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(pre.std, dtype=np.float32).reshape(3, 1, 1)
    for i, img in enumerate(imgs):
        by_hand = (rgb[i].transpose(2, 0, 1).astype(np.float32) / np.float32(255) - mean) / std
        assert np.array_equal(batch[i], by_hand) and np.array_equal(batch[i], eval_pixels(img, pre)), (name, i)


@pytest.mark.parametrize("mean, std", [(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD), ((0.5, 0.25, 0.0), (0.5, 0.1, 2.0))])
def test_normalise_is_the_float32_arithmetic_for_every_uint8_value(mean, std):
    """normalise looks each pixel up in per-channel tables: every value 0-255 of every channel gives the bits of
    ToTensor then Normalize in float32, whatever the config's mean and std; an empty batch is an empty batch."""
    pre = PreprocessConfig(size=(16, 16), mean=mean, std=std)
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    rgb = np.stack([values, values[::-1], values.T], axis=-1)[None]  # [1, 16, 16, 3]: each channel all 256 values
    m = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    by_hand = (rgb.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255) - m) / s
    out = normalise(rgb, pre)
    assert out.dtype == np.float32 and out.shape == (1, 3, 16, 16)
    assert np.array_equal(out, by_hand)
    assert normalise(np.zeros((0, 16, 16, 3), np.uint8), pre).shape == (0, 3, 16, 16)


def test_the_copied_constants_are_open_clips():
    from open_clip.constants import OPENAI_DATASET_MEAN as MEAN, OPENAI_DATASET_STD as STD

    assert (OPENAI_DATASET_MEAN, OPENAI_DATASET_STD) == (MEAN, STD)


def test_the_module_loads_no_torch_or_open_clip():
    code = ("import sys; from PIL import Image; import models.preprocess as p; "
            "p.eval_pixels(Image.new('RGB', (300, 200)), p.PreprocessConfig()); "
            "bad = [m for m in ('torch', 'torchvision', 'open_clip') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
