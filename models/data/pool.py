"""An in-memory pool of rendered shapes images whose captions are drawn afresh on every visit."""

from __future__ import annotations

import random

import numpy as np
import torch
from tqdm import tqdm

from models.data.shapes import ShapeObject, ShapesConfig, caption_one, caption_two, generate
from models.preprocess import PreprocessConfig


class ShapesPool:
    """N training images rendered once (uint8 [N, H, W, 3]); captions re-phrased per batch."""

    def __init__(self, seed: int, n: int, cfg: ShapesConfig, progress: bool = True):
        self.cfg = cfg
        images = np.empty((n, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
        self.objects: list[tuple[ShapeObject, ...]] = []
        it = generate(seed, n, "train", cfg)
        for i, s in enumerate(tqdm(it, total=n, desc="render pool", disable=not progress, unit="img")):
            images[i] = np.asarray(s.image)
            self.objects.append(s.objects)
        self.images = torch.from_numpy(images)

    def __len__(self) -> int:
        return len(self.objects)

    def caption(self, i: int, rng: random.Random) -> str:
        objs = self.objects[i]
        if len(objs) == 2:
            return caption_two(rng, *objs)
        return caption_one(rng, objs[0], self.cfg.partial_caption_prob)

    def batch(self, idx: torch.Tensor, rng: random.Random, pre: PreprocessConfig) -> tuple[torch.Tensor, list[str]]:
        """Normalised images [B, 3, H, W] and one fresh caption per image."""
        x = self.images[idx].permute(0, 3, 1, 2).float().div_(255)
        mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
        std = torch.tensor(pre.std).view(1, 3, 1, 1)
        return (x - mean) / std, [self.caption(int(i), rng) for i in idx]
