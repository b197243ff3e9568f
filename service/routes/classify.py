"""POST /classify: zero-shot classification of images against a label list (or a stored label set)."""

from __future__ import annotations

from typing import Optional

import numpy as np
from fastapi import APIRouter, Depends, Request

from service.auth import require_api_key
from service.errors import InvalidField, UnsupportedMedia
from service.inputs import (content_type, images_from_strings, int_field, read_json, read_multipart, single_field,
                            validate)
from service.routes.common import (ERROR_RESPONSES, body_doc, check_count, engine, note_items, settings,
                                   until_done_or_gone)
from service.routes.labelsets import stored_labelset
from service.schemas import ClassifyRequest, ClassifyResponse
from service.settings import Settings
from service.templates import check_prompt_count, resolve_templates

router = APIRouter(tags=["classification"], dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES)

FORM_PARTS = {
    "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
    "labels": {"type": "array", "items": {"type": "string"}},
    "templates": {"type": "array", "items": {"type": "string"}},
    "labelset": {"type": "string"}, "top_k": {"type": "integer", "minimum": 1},
}


def clean_labels(labels: list[str], s: Settings) -> tuple[str, ...]:
    """Labels as given (order kept); empty ones and duplicates are errors, long ones are truncated later."""
    check_count("labels", len(labels), s.max_labels, "CLIP_MAX_LABELS")
    stripped = [label.strip() for label in labels]
    if any(not label for label in stripped):
        raise InvalidField("labels: every label must be a non-empty string")
    if len(set(stripped)) != len(stripped):
        dup = next(label for label in stripped if stripped.count(label) > 1)
        raise InvalidField(f"labels: {dup[:80]!r} appears more than once")
    return tuple(stripped)


async def _parse(request: Request, s: Settings) -> tuple[list[bytes], ClassifyRequest]:
    ctype = content_type(request)
    if ctype == "multipart/form-data":
        form = await read_multipart(request, max_files=s.max_images_per_request, max_fields=s.max_labels + 200)
        templates = form.fields.get("templates")
        body = validate(ClassifyRequest, dict(
            labels=form.fields.get("labels"), labelset=single_field(form.fields, "labelset"),
            templates=templates[0] if templates and len(templates) == 1 and "{}" not in templates[0] else templates,
            top_k=int_field(form.fields, "top_k")))
        return form.images, body
    if ctype in ("application/json", ""):
        body = await read_json(request, ClassifyRequest)
        if body.images is not None and body.image is not None:
            raise InvalidField("give either `images` or `image`, not both")
        strings = body.images if body.images is not None else ([body.image] if body.image is not None else [])
        check_count("images", len(strings), s.max_images_per_request, "CLIP_MAX_IMAGES_PER_REQUEST")
        return await images_from_strings(request, strings), body
    raise UnsupportedMedia(f"content type {ctype!r} not supported; use multipart/form-data or application/json")


def _label_source(request: Request, body: ClassifyRequest, s: Settings) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(labels, templates) of a stored label set or of the request itself, checked before any model work."""
    if body.labelset is not None:
        if body.labels is not None:
            raise InvalidField("give either `labels` or `labelset`, not both")
        stored = stored_labelset(request, body.labelset)
        return stored.labels, stored.templates
    if body.labels is None:
        raise InvalidField("labels: required (or name a stored `labelset`)")
    labels = clean_labels(body.labels, s)
    templates = resolve_templates(body.templates, s.max_templates)
    check_prompt_count(len(labels), len(templates), s.max_prompts)
    return labels, templates


def ranked(labels: tuple[str, ...], probs: np.ndarray, top_k: Optional[int]) -> list[list[dict]]:
    k = min(top_k or len(labels), len(labels))
    out = []
    for row in probs:
        order = np.argsort(-row, kind="stable")[:k]
        out.append([{"label": labels[j], "score": float(row[j])} for j in order])
    return out


@router.post("/classify", response_model=ClassifyResponse, summary="Zero-shot classification",
             openapi_extra=body_doc("ClassifyRequest", FORM_PARTS))
async def classify(request: Request) -> dict:
    """Scores are the softmax over labels of logit_scale x cosine similarity, with prompt ensembling over the
    templates (mean of normalised template embeddings, renormalised). Default template: `a photo of a {}.`"""
    eng = engine(request)
    s = settings(request)
    images, body = await _parse(request, s)
    check_count("images", len(images), s.max_images_per_request, "CLIP_MAX_IMAGES_PER_REQUEST")
    note_items(request, len(images))

    labels, templates = _label_source(request, body, s)

    async def work():
        deadline = eng.deadline()  # one for the whole request: the label prompts and the images
        proto = await eng.classifier(labels, templates, deadline)
        emb = await eng.embed_images(images, deadline)
        return eng.scores(emb, proto)

    probs = await until_done_or_gone(request, work())
    return {"model": eng.backend.model_id, "fingerprint": eng.backend.fingerprint,
            "results": ranked(labels, probs, body.top_k)}
