"""The two towers of a CLIP model as separate modules, each ending in L2 normalisation (inside the graph)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ImageTower(nn.Module):
    """float pixels [B, 3, H, W] -> L2-normalised image embeddings [B, D] (float32)."""

    def __init__(self, clip: nn.Module, compute_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.clip = clip
        self.compute_dtype = compute_dtype  # float16 graphs cast inside, so callers always pass float32

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.clip.encode_image(pixels.to(self.compute_dtype))  # [B, D]
        return F.normalize(x.float(), dim=-1)  # normalise in float32: fp16 norms lose digits


class TextTower(nn.Module):
    """int64 token ids [B, L] -> L2-normalised text embeddings [B, D] (float32)."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.clip.encode_text(tokens)  # [B, D]; pools at the end-of-text token (argmax of the ids)
        return F.normalize(x.float(), dim=-1)
