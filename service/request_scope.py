"""What a route takes from its request besides the body: the app's settings, engine and label sets, the item count
for the access log, and waiting for work that stops when the client leaves."""

from __future__ import annotations

import asyncio
from typing import Awaitable, TypeVar

from starlette.requests import Request

from service.engine import Engine
from service.errors import ClientGone
from service.labelset_store import LabelSets
from service.lifecycle import Lifecycle
from service.settings import Settings

T = TypeVar("T")


def lifecycle(request: Request) -> Lifecycle:
    return request.app.state.lifecycle


def settings(request: Request) -> Settings:
    return request.app.state.settings


def engine(request: Request) -> Engine:
    """The engine, or a 503 saying why there is none (loading, failed, draining): ask before reading the body."""
    return lifecycle(request).require_engine()


def labelsets(request: Request) -> LabelSets:
    return request.app.state.labelsets


def note_items(request: Request, n: int) -> None:
    """How many items the request carries, for its access-log line (service/middleware.py)."""
    request.scope.setdefault("state", {})["items"] = n


async def until_done_or_gone(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (so its queued items are dropped) if the client disconnects.

    Waits on the ASGI disconnect message instead of polling: polling every 50 ms per waiting request cost
    20-30 ms of server CPU per image at concurrency 32 (docs/benchmarks/README.md). The work runs in the request's
    own task and one watcher task cancels that task when the client goes (a task for the work too, and
    asyncio.wait over both, were ~3 % of a front-end's CPU per one-image request). Call it only after the body has
    been read.
    """
    current = asyncio.current_task()
    assert current is not None
    state = {"over": False, "gone": False}

    def watched(watch: asyncio.Task) -> None:
        # runs between the request task's steps: never once `work` is over (a cancel then would hit the response)
        if state["over"] or watch.cancelled() or watch.exception() is not None:
            return  # the connection could not be watched: just wait for the work
        state["gone"] = True
        current.cancel()

    watch = asyncio.ensure_future(_disconnected(request))
    watch.add_done_callback(watched)
    try:
        return await work
    except asyncio.CancelledError:
        if not state["gone"]:
            raise
        current.uncancel()  # this cancel was ours, not the server's: the request goes on to answer
        raise ClientGone("client closed the connection") from None
    finally:
        state["over"] = True
        watch.cancel()


async def _disconnected(request: Request) -> None:
    """Return when the client has gone: once the body is read, the next ASGI message is http.disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
