"""Named label sets: PUT precomputes and keeps a classifier; GET lists or shows; DELETE forgets."""

from __future__ import annotations

import re

from fastapi import APIRouter, Depends, Request, Response

from service.auth import require_api_key
from service.errors import InvalidField, NotFound
from service.inputs import read_json
from service.labelset_store import LabelSetStore, StoredLabelSet
from service.routes.common import ERROR_RESPONSES, body_doc, engine, settings, until_done_or_gone
from service.schemas import LabelSetInfo, LabelSetRequest
from service.templates import check_prompt_count, resolve_templates

router = APIRouter(tags=["label sets"], dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES)
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _store(request: Request) -> LabelSetStore:
    return request.app.state.labelsets


def stored_labelset(request: Request, name: str) -> StoredLabelSet:
    found = _store(request).get(name)
    if found is None:
        raise NotFound(f"no label set named {name!r}; create it with PUT /labelsets/{name}")
    return found


@router.put("/labelsets/{name}", response_model=LabelSetInfo, summary="Create or replace a label set",
            openapi_extra=body_doc("LabelSetRequest"))
async def put_labelset(name: str, request: Request) -> dict:
    """Precompute the classifier for these labels and templates and keep it under `name`."""
    from service.routes.classify import clean_labels

    if not NAME.match(name):
        raise InvalidField("name: 1-64 characters from letters, digits, '_', '.', '-'")
    eng, s = engine(request), settings(request)
    body = await read_json(request, LabelSetRequest)
    labels = clean_labels(body.labels, s)
    templates = resolve_templates(body.templates, s.max_templates)
    check_prompt_count(len(labels), len(templates), s.max_prompts)  # 413 before any room is reserved
    text_bytes = StoredLabelSet(name, labels, templates, "").text_bytes
    # room is held from before the computation to the insert: concurrent PUTs cannot overshoot the limits
    with _store(request).reserve(name, text_bytes) as reservation:
        await until_done_or_gone(request, eng.classifier(labels, templates))
        stored = StoredLabelSet(name, labels, templates, eng.backend.fingerprint)
        reservation.commit(stored)
    return stored.info()


@router.get("/labelsets", summary="List label sets")
async def list_labelsets(request: Request) -> dict:
    return {"labelsets": [{"name": ls.name, "n_labels": len(ls.labels), "n_templates": len(ls.templates)}
                          for ls in _store(request).values()]}


@router.get("/labelsets/{name}", response_model=LabelSetInfo, summary="Show a label set")
async def get_labelset(name: str, request: Request) -> dict:
    return stored_labelset(request, name).info()


@router.delete("/labelsets/{name}", status_code=204, summary="Delete a label set")
async def delete_labelset(name: str, request: Request) -> Response:
    stored_labelset(request, name)
    _store(request).delete(name)
    return Response(status_code=204)
