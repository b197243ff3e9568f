"""POST /classify: zero-shot classification of images against a label list (or a stored label set)."""

from __future__ import annotations

from typing import Optional

import numpy as np
from fastapi import APIRouter, Depends, Request

from service.auth import require_api_key
from service.inputs import parse_classify
from service.request_scope import engine, labelsets, settings, until_done_or_gone
from service.schemas import ERROR_RESPONSES, ClassifyResponse, body_doc

router = APIRouter(tags=["classification"], dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES)

FORM_PARTS = {
    "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
    "labels": {"type": "array", "items": {"type": "string"}},
    "templates": {"type": "array", "items": {"type": "string"}},
    "labelset": {"type": "string"}, "top_k": {"type": "integer", "minimum": 1},
    "scores": {"type": "string", "enum": ["probability", "cosine"], "default": "probability"},
}


@router.post("/classify", response_model=ClassifyResponse, summary="Zero-shot classification",
             openapi_extra=body_doc("ClassifyRequest", FORM_PARTS))
async def classify(request: Request) -> dict:
    """Scores are the model's own label probabilities (`activation` in the answer and in /info): for CLIP the
    softmax over the labels of logit_scale x cosine similarity (an image's scores sum to 1); for models trained
    with the sigmoid loss (SigLIP) sigmoid(logit_scale x cosine + logit_bias), each label on its own. With
    `scores: cosine`, the raw cosine similarities instead. Each label's embedding is the prompt ensemble over the
    templates (mean of normalised template embeddings, renormalised). Default template: `a photo of a {}.`"""
    eng = engine(request)
    inputs = await parse_classify(request, settings(request), labelsets(request))
    labels, templates = inputs.labelset.labels, inputs.labelset.templates
    scores = await until_done_or_gone(request, eng.classify(inputs.images, labels, templates, scores=inputs.scores))
    return {"model": eng.backend.model_id, "fingerprint": eng.backend.fingerprint,
            "activation": eng.backend.activation.name, "scores": inputs.scores,
            "results": ranked(labels, scores, inputs.top_k)}


def ranked(labels: tuple[str, ...], probs: np.ndarray, top_k: Optional[int]) -> list[list[dict]]:
    """Per image, its labels by score (stable for ties), the best `top_k` of them."""
    k = min(top_k or len(labels), len(labels))
    out = []
    for row in probs:
        order = np.argsort(-row, kind="stable")[:k]
        out.append([{"label": labels[j], "score": float(row[j])} for j in order])
    return out
