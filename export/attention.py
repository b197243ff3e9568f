"""Self-attention traced as plain MatMuls for int8 graphs (same weights, same arithmetic as nn.MultiheadAttention).

nn.MultiheadAttention traces (batch_first) into about eight Transposes, Gathers and Unsqueezes per layer around
its packed projection; after int8 quantization makes the MatMuls 3-4x cheaper those copies become a large share
of the time (Transpose alone 13% of ViT-B-32's int8 image graph at batch 8). `plain_attention` swaps each such
module for one that projects Q, K and V with one MatMul, splits heads with one Reshape + Transpose and merges them
with another (4 Transposes per layer). fp32 graphs are unchanged: in fp32 the two forms ran at the same speed.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn


class PlainSelfAttention(nn.Module):
    """nn.MultiheadAttention's forward for self-attention (q is k is v), batch first, as MatMul/Softmax."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        self.mha = mha  # shares the parameters: nothing is copied
        self.heads = mha.num_heads
        self.head_dim = mha.embed_dim // mha.num_heads

    def forward(self, q_x: torch.Tensor, k_x: torch.Tensor, v_x: torch.Tensor, need_weights: bool = False,
                attn_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        if k_x is not q_x or v_x is not q_x or need_weights or attn_mask is not None and attn_mask.dtype == torch.bool:
            return self.mha(q_x, k_x, v_x, need_weights=need_weights, attn_mask=attn_mask)
        length, width = q_x.shape[1], self.mha.embed_dim
        qkv = F.linear(q_x, self.mha.in_proj_weight, self.mha.in_proj_bias)  # [B, L, 3E]
        q, k, v = qkv.reshape(-1, length, 3 * self.heads, self.head_dim).transpose(1, 2).split(self.heads, dim=1)
        scores = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1)  # [B, H, L, L]
        if attn_mask is not None:
            scores = scores + attn_mask  # additive float mask [L, L] (open_clip's causal text mask)
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(-1, length, width)  # [B, L, E]
        return self.mha.out_proj(out), None


def _swappable(mha: nn.Module) -> bool:
    return (isinstance(mha, nn.MultiheadAttention) and mha.batch_first and mha._qkv_same_embed_dim
            and mha.in_proj_bias is not None and mha.bias_k is None and not mha.add_zero_attn)


@contextmanager
def plain_attention(model: nn.Module) -> Iterator[int]:
    """Within the block, every swappable `.attn` of `model` is a PlainSelfAttention; yields how many were swapped."""
    swapped = [(m, m.attn) for m in model.modules() if _swappable(getattr(m, "attn", None))]
    for owner, mha in swapped:
        owner.attn = PlainSelfAttention(mha)
    try:
        yield len(swapped)
    finally:
        for owner, mha in swapped:
            owner.attn = mha
