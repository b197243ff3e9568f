"""POST /embed/image and POST /embed/text, and FastImagePath: POST /embed/image with plain file parts answered
beside FastAPI's router.

The request an indexing pipeline sends most (`curl -F file=@cat.jpg`) paid more CPU for FastAPI's route matching,
dependency solving and exception middleware and Starlette's form parser (python-multipart, a spooled temporary file
per part) than for decoding its image (issue 16). FastImagePath, innermost of our middlewares (service/app.py),
answers it with the route's steps in the route's order: the API-key check, the engine's readiness, the body,
`note_items`, `Engine.embed_images` until the client leaves, `embeddings_response`; an error gets the app's own
exception handler for it (service/errors.py). Only bodies that service/plain_multipart.py parses are answered
there; any other (JSON, form fields, anything unusual) goes on to the route with its body replayed, so every other
answer, error messages included, is the route's.
"""

from __future__ import annotations

import msgspec
import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.auth import require_api_key
from service.engine import Engine
from service.inputs import parse_embed_images, parse_embed_texts
from service.plain_multipart import boundary_of, file_parts, read_body, replay
from service.request_scope import engine, note_items, settings, until_done_or_gone
from service.schemas import ERROR_RESPONSES, EmbeddingsResponse, body_doc

router = APIRouter(tags=["embeddings"], dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES)

IMAGE_PATH = "/embed/image"
FILE_PARTS = {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}}


@router.post(IMAGE_PATH, response_model=EmbeddingsResponse, summary="Embed images",
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


class FastImagePath:
    """Answers POST /embed/image with plain file parts itself; every other request goes on to `app` as it came."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self.route = next(r for r in router.routes if getattr(r, "path", None) == IMAGE_PATH)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        boundary = None
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == IMAGE_PATH:
            boundary = boundary_of(scope)
        if boundary is None:
            return await self.app(scope, receive, send)
        scope["route"] = self.route  # as FastAPI's router sets it: the access log's and the trace's route label
        request = Request(scope, receive)
        try:
            await require_api_key(request)
            eng = engine(request)  # 503 before the body is read, as the route
            body = await read_body(receive)
            images = file_parts(body, boundary, settings(request).max_images_per_request)
            if images is not None:
                note_items(request, len(images))
                response = embeddings_response(eng, await until_done_or_gone(request, eng.embed_images(images)))
        except Exception as exc:  # noqa: BLE001 - answered as the app answers it
            response = await self._error(request, exc)
        else:
            if images is None:  # not a body parsed here: the route reads it, and answers
                return await self.app(scope, replay(body, receive), send)
        await response(scope, receive, send)

    async def _error(self, request: Request, exc: Exception) -> Response:
        """The app's exception handler for `exc` (service/errors.py install_error_handlers)."""
        handlers = getattr(request.app, "exception_handlers", {})
        handler = next((handlers[c] for c in type(exc).__mro__ if c in handlers), None)
        if handler is None:
            raise exc
        return await handler(request, exc)
