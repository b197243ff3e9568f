"""POST /embed/image and POST /embed/text."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from service.auth import require_api_key
from service.errors import UnsupportedMedia
from service.engine import Engine
from service.inputs import content_type, images_from_strings, read_json, read_multipart
from service.routes.common import (ERROR_RESPONSES, body_doc, check_count, engine, note_items, settings,
                                   until_done_or_gone)
from service.schemas import EmbeddingsResponse, EmbedImagesRequest, EmbedTextsRequest

router = APIRouter(tags=["embeddings"], dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES)

FILE_PARTS = {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}}


async def read_images(request: Request, max_images: int) -> tuple[list[bytes], dict]:
    """Images from multipart `file` parts or JSON `images`; returns (bytes list, other form fields)."""
    ctype = content_type(request)
    if ctype == "multipart/form-data":
        form = await read_multipart(request, max_files=max_images, max_fields=0)
        return form.images, form.fields
    if ctype in ("application/json", ""):
        body = await read_json(request, EmbedImagesRequest)
        check_count("images", len(body.images), max_images, "CLIP_MAX_IMAGES_PER_REQUEST")
        return await images_from_strings(request, body.images), {}
    raise UnsupportedMedia(f"content type {ctype!r} not supported; use multipart/form-data or application/json")


def embeddings_response(eng: Engine, emb) -> dict:
    backend = eng.backend  # not engine(request): a request admitted before SIGTERM must still answer 200
    return {"model": backend.model_id, "fingerprint": backend.fingerprint, "dimensions": backend.embed_dim,
            "embeddings": emb.tolist()}


@router.post("/embed/image", response_model=EmbeddingsResponse, summary="Embed images",
             openapi_extra=body_doc("EmbedImagesRequest", FILE_PARTS))
async def embed_image(request: Request) -> dict:
    """L2-normalised image embeddings in request order. Send `file` parts (`curl -F file=@cat.jpg`) or JSON
    `{"images": [base64 or data URI, ...]}`."""
    eng = engine(request)
    s = settings(request)
    images, _ = await read_images(request, s.max_images_per_request)
    check_count("images", len(images), s.max_images_per_request, "CLIP_MAX_IMAGES_PER_REQUEST")
    note_items(request, len(images))
    emb = await until_done_or_gone(request, eng.embed_images(images))
    return embeddings_response(eng, emb)


@router.post("/embed/text", response_model=EmbeddingsResponse, summary="Embed texts",
             openapi_extra=body_doc("EmbedTextsRequest"))
async def embed_text(request: Request) -> dict:
    """L2-normalised text embeddings in request order: JSON `{"texts": [...]}`."""
    eng = engine(request)
    if content_type(request) not in ("application/json", ""):
        raise UnsupportedMedia("send application/json: {\"texts\": [...]}")
    body = await read_json(request, EmbedTextsRequest)
    check_count("texts", len(body.texts), settings(request).max_texts_per_request, "CLIP_MAX_TEXTS_PER_REQUEST")
    note_items(request, len(body.texts))
    emb = await until_done_or_gone(request, eng.embed_texts(body.texts))
    return embeddings_response(eng, emb)
