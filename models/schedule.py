"""Learning-rate schedule: linear warm-up, then cosine decay to a floor."""

from __future__ import annotations

import math


def lr_at(step: int, base_lr: float, warmup: int, total: int, floor: float = 0.0) -> float:
    """Learning rate for `step` (0-based) of `total` steps."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + 0.5 * (base_lr - floor) * (1 + math.cos(math.pi * min(1.0, progress)))
