"""The paper's contrastive objective, through open_clip's ClipLoss.

loss = (CE(s * I @ T^T, arange) + CE(s * T @ I^T, arange)) / 2 over the N x N cosine-similarity matrix of
L2-normalised image and text embeddings; s = exp(t) is a learnable temperature, initialised to 1/0.07 and
clipped at 100.
"""

from __future__ import annotations

import math

import torch
from open_clip.loss import ClipLoss

MAX_LOGIT_SCALE = 100.0
INIT_LOGIT_SCALE = 1 / 0.07

_loss = ClipLoss()


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                     logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy; features [N, D] already L2-normalised, logit_scale = exp(t) (a scalar)."""
    return _loss(image_features, text_features, logit_scale)


@torch.no_grad()
def clamp_logit_scale(model: torch.nn.Module) -> None:
    """Keep exp(t) in [1, 100], as the paper does, after every optimiser step."""
    model.logit_scale.clamp_(0, math.log(MAX_LOGIT_SCALE))
