"""A tiny OTLP/HTTP trace receiver for tests: what a collector or Jaeger does on port 4318, on a loopback port of
the test process. The server under test exports to it through its real exporter (OTEL_EXPORTER_OTLP_ENDPOINT);
each POST /v1/traces is decoded with opentelemetry-proto into flat `Span` records."""

from __future__ import annotations

import gzip
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                      ExportTraceServiceResponse)

SERVER_KIND = 2  # opentelemetry.proto.trace.v1.Span.SpanKind.SPAN_KIND_SERVER
STATUS_ERROR = 2  # Status.StatusCode.STATUS_CODE_ERROR


@dataclass
class Span:
    name: str
    trace_id: str  # hex
    span_id: str
    parent_id: str  # "" for a root span
    kind: int
    attributes: dict[str, Any]
    links: list[tuple[str, str]]  # (trace_id, span_id)
    status: int
    events: list[str] = field(default_factory=list)
    service: str = ""


def _value(v) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def decode(body: bytes) -> list[Span]:
    request = ExportTraceServiceRequest.FromString(body)
    out = []
    for rs in request.resource_spans:
        service = next((_value(a.value) for a in rs.resource.attributes if a.key == "service.name"), "")
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(Span(s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), s.kind,
                                {a.key: _value(a.value) for a in s.attributes},
                                [(link.trace_id.hex(), link.span_id.hex()) for link in s.links], s.status.code,
                                [e.name for e in s.events], service))
    return out


class OtlpReceiver:
    """Collects the spans POSTed to http://127.0.0.1:<port>/v1/traces; `url` is the OTLP endpoint to give a
    server (OTEL_EXPORTER_OTLP_ENDPOINT, to which the exporter appends /v1/traces)."""

    def __init__(self):
        self.spans: list[Span] = []
        self.posts = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                spans = decode(body) if self.path == "/v1/traces" else []
                with receiver._lock:
                    receiver.posts += 1
                    receiver.spans.extend(spans)
                raw = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args):  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def snapshot(self) -> list[Span]:
        with self._lock:
            return list(self.spans)

    def wait_for(self, ready: Callable[[list[Span]], Optional[Any]], timeout: float = 30.0) -> Any:
        """Poll the spans received until `ready(spans)` returns something truthy; return it."""
        limit = time.monotonic() + timeout
        while True:
            result = ready(self.snapshot())
            if result:
                return result
            if time.monotonic() > limit:
                names = sorted({s.name for s in self.snapshot()})
                raise AssertionError(f"spans not received within {timeout}s (have {len(self.spans)}: {names})")
            time.sleep(0.05)


def trace_of(spans: list[Span], request: Span) -> dict[str, list[Span]]:
    """The children of a request span, by name."""
    out: dict[str, list[Span]] = {}
    for s in spans:
        if s.trace_id == request.trace_id and s.parent_id == request.span_id:
            out.setdefault(s.name, []).append(s)
    return out
