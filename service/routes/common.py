"""Helpers the routes share: the engine, disconnect-aware waiting, limits, OpenAPI request bodies."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, TypeVar

from fastapi import Request

from service.engine import Engine
from service.errors import ClientGone, InvalidField, PayloadTooLarge
from service.lifecycle import Lifecycle
from service.schemas import ErrorResponse
from service.settings import Settings

T = TypeVar("T")


def lifecycle(request: Request) -> Lifecycle:
    return request.app.state.lifecycle


def settings(request: Request) -> Settings:
    return request.app.state.settings


def engine(request: Request) -> Engine:
    return lifecycle(request).require_engine()


async def until_done_or_gone(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (so its queued items are dropped) if the client disconnects.

    Waits on the ASGI disconnect message instead of polling: polling every 50 ms per waiting request cost
    20-30 ms of server CPU per image at concurrency 32 (docs/benchmarks/README.md). Call it only after the
    body has been read.
    """
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        if gone.exception() is None:
            raise ClientGone("client closed the connection")
        return await task  # the connection could not be watched: just wait for the work
    finally:
        for t in (task, gone):
            if not t.done():
                t.cancel()


async def _disconnected(request: Request) -> None:
    """Return when the client has gone: once the body is read, the next ASGI message is http.disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def check_count(kind: str, n: int, limit: int, setting: str) -> None:
    if n == 0:
        raise InvalidField(f"{kind}: give at least one")
    if n > limit:
        raise PayloadTooLarge(f"{n} {kind} in one request; the limit is {limit} ({setting})")


def note_items(request: Request, n: int) -> None:
    request.scope.setdefault("state", {})["items"] = n


def body_doc(json_schema_ref: str, multipart: dict[str, Any] | None = None) -> dict[str, Any]:
    """openapi_extra describing a JSON body and, optionally, its multipart/form-data twin."""
    content: dict[str, Any] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{json_schema_ref}"}}}
    if multipart:
        content["multipart/form-data"] = {"schema": {"type": "object", "properties": multipart}}
    return {"requestBody": {"required": True, "content": content}}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": d}
    for code, d in {400: "undecodable input", 401: "missing or wrong API key", 413: "too large",
                    415: "unsupported media type", 422: "invalid fields",
                    503: "overloaded, not ready or shutting down (see Retry-After)"}.items()
}
