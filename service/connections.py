"""What one client connection may hold: deadlines for a request's headers and body, and a cap on open
connections. uvicorn has none of the first two, and answers its own cap in plain text.

Why a protocol subclass: the header phase happens before the ASGI app is called, so no middleware can see a
client that sends half a request line and stops, or opens a connection and sends nothing. uvicorn's
keep-alive timer covers only the idle time between requests, and data_received cancels it, so one byte every
few seconds kept a connection open for good. The class below adds two timers to uvicorn's httptools protocol
(the one uvicorn[standard] runs), set and cleared at the parser's callbacks:

    connection made / first byte of a request --CLIP_HEADER_TIMEOUT_S--> headers complete
    headers complete --CLIP_BODY_TIMEOUT_S--> body complete (whether or not the app reads it)

A timer that fires answers 408 when no response has started (nothing at all for a connection that never sent
a byte) and closes the connection. A connection opened while CLIP_MAX_CONNECTIONS are open is marked, and
every request on it gets 503 from the app's middleware (service/middleware.py), in the usual error shape and
with CORS headers, then the connection closes. uvicorn's own limit_concurrency is left off: its 503 is plain
text, and it also refuses requests on connections that were admitted earlier.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Callable, Optional

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from service.errors import error_payload
from service.metrics import Metrics

log = logging.getLogger("service.access")

# scope["extensions"] entries set here and read by service/middleware.py
OVER_CAPACITY = "clip.over_capacity"  # this request's connection was opened above CLIP_MAX_CONNECTIONS
CUT_OFF = "clip.cut_off"  # the status to log for a request the server cut off (its app saw a disconnect)


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float  # connection made or first byte of a request -> end of its headers
    body_timeout_s: float  # end of the headers -> end of the body
    max_connections: int  # open connections; those beyond get 503


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body deadlines and a connection cap."""

    limits: ConnectionLimits
    metrics: Optional[Metrics] = None
    _timer: Optional[asyncio.TimerHandle] = None
    _over_capacity = False
    _in_headers = False  # a request's first byte arrived and its headers have not ended

    # --- the connection ---------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._over_capacity = len(self.connections) > self.limits.max_connections
        if self._over_capacity:
            self._count("too_many_connections")
        self._arm(self.limits.header_timeout_s, self._headers_too_slow)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._disarm()
        super().connection_lost(exc)

    # --- parser callbacks -------------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        if self._timer is None:  # the first request's clock runs from connection_made; later ones from here
            self._arm(self.limits.header_timeout_s, self._headers_too_slow)
        if self._over_capacity:
            self.scope.setdefault("extensions", {})[OVER_CAPACITY] = self.limits.max_connections

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._in_headers = False
        cycle = self.cycle
        self._arm(self.limits.body_timeout_s, lambda: self._body_too_slow(cycle))

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    # --- the timers -------------------------------------------------------------------------------------------
    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _headers_too_slow(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        self._count("header_timeout")
        answering = self.cycle is not None and not self.cycle.response_complete  # a pipelined earlier request
        if self._in_headers and not answering:  # part of a request arrived: say why it is cut off
            log.info(json.dumps({"cut_off": "headers", "status": 408, "client": (self.client or ("-",))[0],
                                 "seconds": self.limits.header_timeout_s}))
            self._answer_408_and_close("", f"request headers not complete within {self.limits.header_timeout_s:g} s "
                                           f"(CLIP_HEADER_TIMEOUT_S)")
        else:  # a connection that never sent a byte: nothing to answer
            self.transport.close()

    def _body_too_slow(self, cycle: RequestResponseCycle) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        self._count("body_timeout")
        if cycle.response_started:  # the app answered already (e.g. 401 without reading): just stop listening
            self.transport.close()
            return
        # The app is waiting for the rest of the body: it gets a disconnect (and stops), the client a 408.
        cycle.scope.setdefault("extensions", {})[CUT_OFF] = 408
        cycle.disconnected = True
        cycle.message_event.set()
        message = f"request body not complete within {self.limits.body_timeout_s:g} s (CLIP_BODY_TIMEOUT_S)"
        self._answer_408_and_close(cycle.scope.get("path", ""), message)

    def _answer_408_and_close(self, path: str, message: str) -> None:
        """Written here, not by the app: it is not running (headers) or is told the client left (body). The
        body has the usual error shape (OpenAI's under /v1)."""
        body = json.dumps(error_payload(path, 408, "request_timeout", message)).encode()
        head = (f"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
        self.transport.write(head + body)
        self.transport.close()

    def _count(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.rejected.labels(reason).inc()


def protocol_class(limits: ConnectionLimits, metrics: Optional[Metrics] = None) -> type[GuardedHttpProtocol]:
    """The protocol class to pass to uvicorn as `http=`, bound to these limits and metrics."""
    return type("ClipHttpProtocol", (GuardedHttpProtocol,), {"limits": limits, "metrics": metrics})


def close_all(connections) -> int:
    """Close every connection still open (at the end of shutdown): their clients see the connection end, not
    an answer. abort(), because a client that stopped reading would keep close() waiting on the buffer. A
    request cut off unanswered is logged and counted as 503 (shutting down), not as its app's view of it."""
    n = 0
    for connection in list(connections):
        transport = getattr(connection, "transport", None)
        if transport is None or transport.is_closing():
            continue
        cycle = getattr(connection, "cycle", None)
        if cycle is not None and not cycle.response_started:
            cycle.scope.setdefault("extensions", {})[CUT_OFF] = 503
        transport.abort()
        n += 1
    return n
