"""Named label sets: PUT precomputes and keeps a classifier; GET lists or shows; DELETE forgets.
The sets and their limits live in service/labelset_store.py."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from service.auth import require_api_key
from service.inputs import parse_labelset, parse_labelset_name
from service.request_scope import engine, labelsets, settings, until_done_or_gone
from service.schemas import ERROR_RESPONSES, LabelSetInfo, body_doc

router = APIRouter(tags=["label sets"], dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES)


@router.put("/labelsets/{name}", response_model=LabelSetInfo, summary="Create or replace a label set",
            openapi_extra=body_doc("LabelSetRequest"))
async def put_labelset(name: str, request: Request) -> dict:
    """Precompute the classifier for these labels and templates and keep it under `name`."""
    name = parse_labelset_name(name)
    eng = engine(request)
    labelset = await parse_labelset(request, settings(request))  # 413 (too many prompts) before room is reserved
    compute = lambda: eng.classifier(labelset.labels, labelset.templates)  # noqa: E731
    stored = await until_done_or_gone(request, labelsets(request).put(name, labelset, compute,
                                                                      eng.backend.fingerprint))
    return stored.info()


@router.get("/labelsets", summary="List label sets")
async def list_labelsets(request: Request) -> dict:
    return {"labelsets": [{"name": ls.name, "n_labels": len(ls.labels), "n_templates": len(ls.templates)}
                          for ls in await labelsets(request).list()]}


@router.get("/labelsets/{name}", response_model=LabelSetInfo, summary="Show a label set")
async def get_labelset(name: str, request: Request) -> dict:
    return (await labelsets(request).get(name)).info()


@router.delete("/labelsets/{name}", status_code=204, summary="Delete a label set")
async def delete_labelset(name: str, request: Request) -> Response:
    await labelsets(request).delete(name)
    return Response(status_code=204)
