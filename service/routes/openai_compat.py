"""The OpenAI-compatible API: POST /v1/embeddings and GET /v1/models, so OpenAI clients work unchanged.

Plain strings are texts; `data:image/...;base64,...` URIs are images (so are http(s) image URLs when URL fetching
is enabled). `dimensions` keeps the first N values and renormalises. Errors here take OpenAI's shape
(service/errors.py does that for every path under /v1).
"""

from __future__ import annotations

import base64
import time
from typing import Optional

import numpy as np
from fastapi import APIRouter, Depends, Request

from service.auth import require_api_key
from service.backends import Backend
from service.inputs import check_model, parse_openai_embeddings
from service.request_scope import engine, settings, until_done_or_gone
from service.schemas import ERROR_RESPONSES, OpenAIEmbeddingsResponse, OpenAIModel, OpenAIModelList, body_doc

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"], dependencies=[Depends(require_api_key)],
                   responses={**ERROR_RESPONSES, 404: {"description": "unknown model (code model_not_found)"}})

OWNER = "clip-serve"
STARTED = int(time.time())  # `created` of the served model: when this server process started


@router.post("/embeddings", response_model=OpenAIEmbeddingsResponse, summary="Create embeddings (OpenAI-compatible)",
             openapi_extra=body_doc("OpenAIEmbeddingsRequest"))
async def create_embeddings(request: Request) -> dict:
    """OpenAI's embeddings API: texts and `data:image/...;base64,...` images in one list, results in order.
    `encoding_format: base64` returns little-endian float32 bytes; `dimensions` truncates and renormalises."""
    eng = engine(request)
    inputs = await parse_openai_embeddings(request, settings(request), eng.backend)
    out = await until_done_or_gone(request, eng.embed_mixed(inputs.items, field="input"))
    emb = truncate(out.vectors, inputs.dimensions)
    return {"object": "list", "model": eng.backend.model_id,
            "data": [{"object": "embedding", "index": i, "embedding": encode_vector(v, inputs.encoding_format)}
                     for i, v in enumerate(emb)],
            "usage": {"prompt_tokens": out.prompt_tokens, "total_tokens": out.prompt_tokens}}


def truncate(emb: np.ndarray, dimensions: Optional[int]) -> np.ndarray:
    """Keep the first `dimensions` values and renormalise (Matryoshka-style; CLIP is not trained for it)."""
    if dimensions is None or dimensions == emb.shape[1]:
        return emb
    cut = emb[:, :dimensions]
    return cut / np.linalg.norm(cut, axis=1, keepdims=True).clip(min=1e-12)


def encode_vector(vec: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(np.ascontiguousarray(vec, dtype="<f4").tobytes()).decode("ascii")
    return vec.astype(np.float32).tolist()


def _model_card(backend: Backend) -> dict:
    return {"id": backend.model_id, "object": "model", "created": STARTED, "owned_by": OWNER}


@router.get("/models", response_model=OpenAIModelList, summary="List models (OpenAI-compatible)")
async def list_models(request: Request) -> dict:
    return {"object": "list", "data": [_model_card(engine(request).backend)]}


@router.get("/models/{model:path}", response_model=OpenAIModel, summary="Retrieve a model (OpenAI-compatible)")
async def retrieve_model(model: str, request: Request) -> dict:
    backend = engine(request).backend
    check_model(model, backend)
    return _model_card(backend)
