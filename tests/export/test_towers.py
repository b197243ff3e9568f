"""The tower wrappers are exactly the model's own normalised encoders."""

from __future__ import annotations

import torch

from export.towers import ImageTower, TextTower


@torch.no_grad()
def test_image_tower_matches_encode_image(bundled):
    x = torch.randn(3, 3, *bundled.preprocess.size)  # [B, 3, H, W]
    out = ImageTower(bundled.model)(x)
    assert out.shape == (3, bundled.embed_dim) and out.dtype == torch.float32
    torch.testing.assert_close(out, bundled.model.encode_image(x, normalize=True))
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))


@torch.no_grad()
def test_text_tower_matches_encode_text(bundled):
    tokens = bundled.tokenizer(["a red circle", "", "a blue star on the left"])  # [B, L]
    out = TextTower(bundled.model)(tokens)
    assert out.shape == (3, bundled.embed_dim) and out.dtype == torch.float32
    torch.testing.assert_close(out, bundled.model.encode_text(tokens, normalize=True))


@torch.no_grad()
def test_fp16_image_tower_takes_float32_and_returns_float32(bundled):
    import copy

    half = copy.deepcopy(bundled.model).half()
    x = torch.randn(2, 3, *bundled.preprocess.size)
    out = ImageTower(half, torch.float16)(x)
    assert out.dtype == torch.float32
    ref = bundled.model.encode_image(x, normalize=True)
    assert torch.nn.functional.cosine_similarity(out, ref).min() > 0.999
