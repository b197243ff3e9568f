"""Pure-ASGI middleware: connection cap (503), body-size cap (413 before buffering) and per-request log line +
metrics."""

from __future__ import annotations

import json
import logging
import os
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.connections import CUT_OFF, OVER_CAPACITY
from service.errors import Overloaded, PayloadTooLarge, error_payload, error_response
from service.lifecycle import Lifecycle
from service.metrics import Metrics

access_log = logging.getLogger("service.access")


class ConnectionCap:
    """Answer 503 on a connection opened above CLIP_MAX_CONNECTIONS (service/connections.py marks it), before
    any work; the liveness probe still passes, so a flood of connections does not get the process restarted.

    The body is read (and dropped) first: closing a socket with unread data sends a reset, and the client may
    lose the 503 with it (seen with 300 concurrent uploads). BodyLimit, outside, bounds what is read."""

    LIVENESS = "/healthz"

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cap = scope.get("extensions", {}).get(OVER_CAPACITY) if scope["type"] == "http" else None
        if cap is None or scope["path"] == self.LIVENESS:
            return await self.app(scope, receive, send)
        message = await receive()
        while message["type"] == "http.request" and message.get("more_body"):
            message = await receive()
        if message["type"] == "http.disconnect":
            return
        response = error_response(Overloaded(f"too many open connections (CLIP_MAX_CONNECTIONS={cap}); retry "
                                             f"later or on another replica", retry_after=1), scope["path"])
        response.headers["connection"] = "close"
        await response(scope, receive, send)


class BodyLimit:
    """Refuse bodies over `max_bytes`: from Content-Length at once, or while streaming a chunked body."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            message = f"body of {int(length):,} bytes exceeds {self.max_bytes:,} (CLIP_MAX_BODY_BYTES)"
            return await _send_json(send, 413, error_payload(scope["path"], 413, "payload_too_large", message))
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise PayloadTooLarge(f"body exceeds {self.max_bytes:,} bytes (CLIP_MAX_BODY_BYTES)")
            return message

        await self.app(scope, limited, send)


async def _send_json(send: Send, status: int, body: dict) -> None:
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": raw})


class AccessLog:
    """One structured log line and the request metrics per HTTP request; counts requests in flight."""

    QUIET = {"/healthz", "/readyz", "/metrics"}

    def __init__(self, app: ASGIApp, metrics: Metrics, lifecycle: Lifecycle):
        self.app, self.metrics, self.lifecycle = app, metrics, lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500
        self.lifecycle.inflight_requests += 1

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.lifecycle.inflight_requests -= 1
            status = scope.get("extensions", {}).get(CUT_OFF, status)  # cut off by us: the app saw a disconnect
            self._record(scope, status, time.perf_counter() - start)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        endpoint = getattr(route, "path", None) or "other"  # route templates only: bounded label values
        self.metrics.requests.labels(endpoint, str(status)).inc()
        self.metrics.request_seconds.labels(endpoint).observe(seconds)
        if endpoint in self.QUIET and status < 400:
            return
        client = scope.get("client") or ("-", 0)
        access_log.info(json.dumps({
            "method": scope["method"], "path": scope["path"], "endpoint": endpoint, "status": status,
            "ms": round(seconds * 1000, 2), "items": scope.get("state", {}).get("items"), "client": client[0],
            "pid": os.getpid()}))  # which process served it (CLIP_WORKERS >= 1 runs several)
