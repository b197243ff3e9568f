"""The OpenAI-compatible API: POST /v1/embeddings and GET /v1/models, so OpenAI clients work unchanged.

Plain strings are texts; `data:image/...;base64,...` URIs are images (so are http(s) image URLs when URL fetching
is enabled). `dimensions` keeps the first N values and renormalises. Errors here take OpenAI's shape
(service/errors.py does that for every path under /v1).
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from typing import Awaitable, Optional

import numpy as np
from fastapi import APIRouter, Depends, Request

from service.auth import require_api_key
from service.backends import Backend
from service.engine import Engine
from service.errors import ApiError, InvalidField, ModelNotFound, UnsupportedMedia
from service.inputs import content_type, images_from_strings, read_json
from service.routes.common import (ERROR_RESPONSES, body_doc, check_count, engine, note_items, settings,
                                   until_done_or_gone)
from service.schemas import OpenAIEmbeddingsRequest, OpenAIEmbeddingsResponse, OpenAIModel, OpenAIModelList

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"], dependencies=[Depends(require_api_key)],
                   responses={**ERROR_RESPONSES, 404: {"description": "unknown model (code model_not_found)"}})

MODEL_ALIASES = ("clip",)  # what tools configured for "a CLIP model" may send, besides the id and fingerprint
OWNER = "clip-serve"
STARTED = int(time.time())  # `created` of the served model: when this server process started
_IMAGES_INDEX = re.compile(r"images\[(\d+)\]")
_HTTP_URL = re.compile(r"^https?://\S+$", re.I)


def check_model(requested: str, backend: Backend) -> None:
    """The request's `model` must name what this server serves: its id, its fingerprint, or an alias."""
    if requested in (backend.model_id, backend.fingerprint, *MODEL_ALIASES):
        return
    raise ModelNotFound(f"The model `{requested}` does not exist on this server. It serves `{backend.model_id}` "
                        f"(fingerprint {backend.fingerprint}); send that, the fingerprint, or `clip`.", param="model")


def input_strings(value: object) -> list[str]:
    """The request's `input` as a list of strings; token arrays are refused with the reason."""
    items = [value] if isinstance(value, str) else list(value)  # type: ignore[call-overload]
    if any(not isinstance(x, str) for x in items):
        raise InvalidField("input: token arrays are not supported (this server tokenises with the model's own "
                           "tokenizer); send strings. LangChain: OpenAIEmbeddings(check_embedding_ctx_length=False)",
                           param="input")
    return items


def is_image(item: str, urls_allowed: bool) -> bool:
    """data: URIs go to the image tower (a non-image data URI is refused with 415, not embedded as text); so do
    single http(s) URLs when the server fetches image URLs. Everything else is text."""
    item = item.strip()
    return item[:5].lower() == "data:" or (urls_allowed and bool(_HTTP_URL.match(item)))


def _renamed(exc: ApiError, positions: Optional[list[int]] = None) -> ApiError:
    """Errors that name `images[j]` should name the item's place in `input` (positions[j]) instead."""
    place = (lambda j: positions[j]) if positions is not None else (lambda j: j)
    exc.message = _IMAGES_INDEX.sub(lambda m: f"input[{place(int(m.group(1)))}]", exc.message)
    exc.param = "input"
    return exc


async def _all(*aws: Awaitable) -> list:
    """Like gather, but a failure cancels the siblings, so their queued items are dropped."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()


async def count_tokens(eng: Engine, texts: list[str]) -> int:
    """Prompt tokens as the model sees them: non-padding ids, start/end included, truncated to the context."""
    if not texts:
        return 0
    tokens = await asyncio.get_running_loop().run_in_executor(eng.preprocess_pool, eng.backend.tokenize, texts)
    return int(np.count_nonzero(tokens))  # [B, context_length], 0 is padding


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


async def _embed(request: Request, eng: Engine, items: list[str]) -> tuple[np.ndarray, int]:
    """Texts and images of one request, encoded concurrently, back in request order: ([N, D], prompt tokens)."""
    s = settings(request)
    urls_allowed = getattr(request.app.state, "url_fetcher", None) is not None  # CLIP_ALLOW_URLS
    image_pos = [i for i, x in enumerate(items) if is_image(x, urls_allowed)]
    text_pos = [i for i, x in enumerate(items) if not is_image(x, urls_allowed)]
    if text_pos:
        check_count("texts", len(text_pos), s.max_texts_per_request, "CLIP_MAX_TEXTS_PER_REQUEST")
    if image_pos:
        check_count("images", len(image_pos), s.max_images_per_request, "CLIP_MAX_IMAGES_PER_REQUEST")
    texts = [items[i] for i in text_pos]

    async def images_or_none():
        if not image_pos:
            return None
        try:  # base64 decoded, URLs downloaded (service/inputs.py); errors name images[j] of this sub-list
            return await eng.embed_images(await images_from_strings(request, [items[i] for i in image_pos]))
        except ApiError as exc:
            if len(image_pos) == 1 and not exc.message.startswith("images["):  # the engine names only one of many
                exc.message = f"images[0]: {exc.message}"
            raise _renamed(exc, image_pos)

    async def texts_or_none():
        return await eng.embed_texts(texts) if texts else None

    text_emb, image_emb, tokens = await _all(texts_or_none(), images_or_none(), count_tokens(eng, texts))
    out = np.empty((len(items), eng.backend.embed_dim), dtype=np.float32)  # [N, D]
    if text_emb is not None:
        out[text_pos] = text_emb
    if image_emb is not None:
        out[image_pos] = image_emb
    return out, tokens


@router.post("/embeddings", response_model=OpenAIEmbeddingsResponse, summary="Create embeddings (OpenAI-compatible)",
             openapi_extra=body_doc("OpenAIEmbeddingsRequest"))
async def create_embeddings(request: Request) -> dict:
    """OpenAI's embeddings API: texts and `data:image/...;base64,...` images in one list, results in order.
    `encoding_format: base64` returns little-endian float32 bytes; `dimensions` truncates and renormalises."""
    eng = engine(request)
    if content_type(request) not in ("application/json", ""):
        raise UnsupportedMedia("send application/json: {\"model\": \"clip\", \"input\": [...]}")
    body = await read_json(request, OpenAIEmbeddingsRequest)
    check_model(body.model, eng.backend)
    if body.dimensions is not None and body.dimensions > eng.backend.embed_dim:
        raise InvalidField(f"dimensions: {body.dimensions} is more than the model's {eng.backend.embed_dim}",
                           param="dimensions")
    items = input_strings(body.input)
    if not items:
        raise InvalidField("input: give at least one string", param="input")
    note_items(request, len(items))
    emb, tokens = await until_done_or_gone(request, _embed(request, eng, items))
    emb = truncate(emb, body.dimensions)
    return {"object": "list", "model": eng.backend.model_id,
            "data": [{"object": "embedding", "index": i, "embedding": encode_vector(v, body.encoding_format)}
                     for i, v in enumerate(emb)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


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
