"""POST /embed/image and POST /embed/text."""

from __future__ import annotations

import msgspec
import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from service.auth import require_api_key
from service.engine import Engine
from service.inputs import parse_embed_images, parse_embed_texts
from service.request_scope import engine, settings, until_done_or_gone
from service.schemas import ERROR_RESPONSES, EmbeddingsResponse, body_doc

router = APIRouter(tags=["embeddings"], dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES)

FILE_PARTS = {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}}


@router.post("/embed/image", response_model=EmbeddingsResponse, summary="Embed images",
             openapi_extra=body_doc("EmbedImagesRequest", FILE_PARTS))
async def embed_image(request: Request) -> Response:
    """L2-normalised image embeddings in request order. Send `file` parts (`curl -F file=@cat.jpg`) or JSON
    `{"images": [base64 or data URI, ...]}`."""
    eng = engine(request)
    inputs = await parse_embed_images(request, settings(request))
    emb = await until_done_or_gone(request, eng.embed_images(inputs.images))
    return embeddings_response(eng, emb)


@router.post("/embed/text", response_model=EmbeddingsResponse, summary="Embed texts",
             openapi_extra=body_doc("EmbedTextsRequest"))
async def embed_text(request: Request) -> Response:
    """L2-normalised text embeddings in request order: JSON `{"texts": [...]}`."""
    eng = engine(request)
    inputs = await parse_embed_texts(request, settings(request))
    emb = await until_done_or_gone(request, eng.embed_texts(inputs.texts))
    return embeddings_response(eng, emb)


def embeddings_response(eng: Engine, emb: np.ndarray) -> Response:
    """The EmbeddingsResponse body, encoded here: FastAPI's validation and serialisation of the same dict through
    the response model cost ~5 % of a front-end's CPU per one-image request (the schema still documents it)."""
    backend = eng.backend  # not engine(request): a request admitted before SIGTERM must still answer 200
    body = {"model": backend.model_id, "fingerprint": backend.fingerprint, "dimensions": backend.embed_dim,
            "embeddings": emb.tolist()}
    return Response(msgspec.json.encode(body), media_type="application/json")
