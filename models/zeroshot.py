"""Zero-shot classifiers with the paper's prompt ensembling."""

from __future__ import annotations

from typing import Sequence

import torch
from open_clip import build_zero_shot_classifier


@torch.no_grad()
def zero_shot_weights(model: torch.nn.Module, tokenizer, labels: Sequence[str], templates: Sequence[str],
                      device: str | torch.device = "cpu") -> torch.Tensor:
    """[D, C] class prototypes: per label, the mean of its L2-normalised template embeddings, renormalised."""
    return build_zero_shot_classifier(model, tokenizer, list(labels), list(templates),
                                      num_classes_per_batch=max(1, 512 // len(templates)), device=device)
