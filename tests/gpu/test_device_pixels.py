"""service/device_pixels.py on a real GPU: uint8 batches uploaded from pinned buffers and normalised on the device
give the embeddings of the CPU path (models.preprocess.normalise, then the same model). Skipped without CUDA; not
yet run (the repository's machines have no GPU)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


@pytest.mark.gpu
def test_device_normalisation_gives_the_cpu_paths_embeddings(bundled_dir, photos):
    from export.runtime.eager import TorchTowers
    from models.preprocess import eval_uint8, normalise
    from service.device_pixels import DevicePixels

    towers = TorchTowers.load(str(bundled_dir), device="cuda")
    pre = towers.loaded.preprocess
    rgb = np.stack([eval_uint8(Image.fromarray(p), pre) for p in photos.values()])  # [4, H, W, 3]
    on_device = DevicePixels(towers, pre, max_batch=2)  # four photos: two chunks, so both slots are used
    got = np.concatenate([on_device(rgb), on_device(rgb[:1])])
    want = towers.encode_image(normalise(np.concatenate([rgb, rgb[:1]]), pre))
    cosine = (got * want).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() >= 0.99999, cosine  # the same arithmetic; cuDNN may pick other convolution algorithms
