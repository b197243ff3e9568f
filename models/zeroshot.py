"""Zero-shot label scores: how image-to-label cosine similarities become what /classify and the evaluation report.

A model's own head decides the activation. CLIP (contrastive, softmax loss) scores a label against the others:
softmax over the labels of logit_scale x cosine, so the scores of one image sum to 1. Models trained with the sigmoid
loss (SigLIP; open_clip gives them a learned `logit_bias`) score each label on its own: sigmoid(logit_scale x cosine +
logit_bias), independent of the other labels (multi-label; the scores need not sum to 1).

numpy only (no torch): the server, the export runtime without PyTorch, the parity check and the evaluation share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

import numpy as np

ActivationName = Literal["softmax", "sigmoid"]
ScoreKind = Literal["probability", "cosine"]
SCORE_KINDS: tuple[str, ...] = ("probability", "cosine")


@dataclass(frozen=True)
class Activation:
    """A model's zero-shot head: its learned scale and, for sigmoid-loss models, its learned bias."""

    logit_scale: float  # exp(learned temperature)
    logit_bias: Optional[float] = None  # the sigmoid loss's learned bias; None for softmax (CLIP) models

    @property
    def name(self) -> ActivationName:
        return "sigmoid" if self.logit_bias is not None else "softmax"

    def to_dict(self) -> dict[str, Any]:
        """What /info and an export's manifest say about the head (JSON-serialisable)."""
        return {"activation": self.name, "logit_scale": self.logit_scale, "logit_bias": self.logit_bias}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Activation":
        """The head back from `to_dict` (e.g. a backend's description sent to another process)."""
        bias = d.get("logit_bias")
        return cls(float(d["logit_scale"]), None if bias is None else float(bias))

    def probabilities(self, cosines: np.ndarray) -> np.ndarray:
        """[N, C] cosines -> [N, C] label probabilities, in the cosines' float dtype."""
        logits = self.logit_scale * cosines
        if self.logit_bias is not None:
            return _sigmoid(logits + self.logit_bias)
        logits = logits - logits.max(axis=-1, keepdims=True)  # exp never overflows
        p = np.exp(logits)
        return p / p.sum(axis=-1, keepdims=True)


def label_scores(image_embeddings: np.ndarray, prototypes: np.ndarray, activation: Activation,
                 scores: ScoreKind = "probability") -> np.ndarray:
    """[N, D] L2-normalised image embeddings x [C, D] label prototypes (models/prompts.py) -> [N, C] scores: the
    model's label probabilities, or (scores="cosine") the raw cosine similarities."""
    if scores not in SCORE_KINDS:
        raise ValueError(f"scores must be one of {SCORE_KINDS}, not {scores!r}")
    cosines = image_embeddings @ prototypes.T  # [N, C]
    return cosines if scores == "cosine" else activation.probabilities(cosines)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp(-log(1 + exp(-x))): no overflow warning for logits far below zero (a bias of -10 makes most of them so)
    return np.exp(-np.logaddexp(0, -x)).astype(x.dtype, copy=False)
