"""OpenTelemetry tracing: off unless asked for; off, every hook is one check of a module global, and nothing of
OpenTelemetry's SDK is imported.

On with `CLIP_OTEL=true` or the standard environment: `OTEL_TRACES_EXPORTER=otlp|console` (comma-separated for
both), or an OTLP endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; OTLP over
HTTP/protobuf). `CLIP_OTEL=false`, `OTEL_TRACES_EXPORTER=none` or `OTEL_SDK_DISABLED=true` keep it off whatever else
is set. The SDK reads the rest itself: `OTEL_SERVICE_NAME` (default here `clip-serve`), `OTEL_RESOURCE_ATTRIBUTES`,
`OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_PROPAGATORS`. The packages are the `otel`
extra (`pip install 'clip-serve[otel]'`); a server told to trace without them stops at start-up saying so.

One trace per request (probes and scrapes, /healthz /readyz /metrics, are not traced):

    POST /embed/image   server span, child of the caller's span when the request carries a W3C `traceparent`
                        header: http.* attributes, http.route, status (ERROR from 500), clip.items (the request's
                        item count), the ApiError that answered it as an exception event
      decode            one per image, in the preprocess pool: clip.image.index, clip.image.bytes, the image's error.
                        Per image, not per request: the images of a request decode in parallel in different workers,
                        so only per-image spans show which one was slow or bad and how long each waited for a worker
                        (50-80 us a span on a loaded 2-core machine, next to milliseconds of decoding)
      queue_wait        per request and modality: from its items entering the batcher's queue until the last of them
                        is taken into a batch (clip.modality, clip.queue.items)
      inference         per batch: clip.modality, clip.batch_size, and a link to the request span of every request
                        whose items it computed. Its parent is the first of those requests (a span has one parent,
                        and a batch span of its own trace would double the traces); the others find it by the link.

The tracer provider is this module's own, never the global one: FastAPI (0.16x) traces requests by itself as soon as
a global provider is set, which would add a second server span and per-dependency spans to every request.

Across processes (the HTTP front-end and the engine in different processes) a span context travels as its W3C
`traceparent` string, a plain str that any frame format carries: the sender calls `traceparent()` (the current
span's, e.g. the request span while a route runs; None when tracing is off), the receiver `context_from(text)`, and
passes that context where a `capture()` result goes (`span`, `queued(..., parent=)`), or makes it current around the
call that queues the request's items (`with attached(context): ...`); `queued` and `inference` then parent and link
to the remote request span exactly as they do in one process. The string keeps the sampled flag, so an unsampled
request stays unsampled in the engine too. Each process calls `setup` at its start (same environment: each exports
its own spans, under one service name) and `shutdown` at its end.
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Optional

if TYPE_CHECKING:  # the SDK is imported only when tracing is on
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, SpanContext, Tracer
    from starlette.types import Message, Receive, Scope, Send

    from service.settings import Settings

log = logging.getLogger("service.tracing")

DEFAULT_SERVICE_NAME = "clip-serve"
EXTRA_HINT = "pip install 'clip-serve[otel]'"
_NOOP = nullcontext()

# At exit, buffered spans get this long to reach the collector: 0.4 s did with one up; one that is down would
# otherwise hold the exit for the exporter's retries (7.7 s measured) out of the 10 s the process has after its drain
# (service/__main__.py EXIT_MARGIN_S).
SHUTDOWN_FLUSH_S = 2.0

_tracer: Optional["Tracer"] = None  # None: tracing is off, every hook returns at once
_provider: Any = None
_described = "off"


class TracingUnavailable(RuntimeError):
    """Tracing was asked for but cannot start (packages missing, an exporter or protocol not supported)."""


# --- start-up -------------------------------------------------------------------------------------------------
def wanted(settings: "Settings") -> bool:
    """Whether this configuration asks for traces (see the module docstring)."""
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true" or settings.otel is False:
        return False
    exporters = _exporter_names()
    if exporters == ["none"]:
        return False
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return bool(settings.otel or exporters or endpoint)


def setup(settings: "Settings") -> bool:
    """Start tracing if the configuration asks for it; returns whether it is on. Raises TracingUnavailable with the
    remedy when it is asked for and cannot start."""
    global _tracer, _provider, _described
    if _tracer is not None or not wanted(settings):
        return _tracer is not None
    require(settings)
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):  # OTEL_SERVICE_NAME unset
        resource = resource.merge(Resource({"service.name": DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER, parent-based by default
    names = _exporter_names() or ["otlp"]
    for exporter in _exporters(names):
        provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_*: export off the request path
    _provider, _tracer = provider, provider.get_tracer("clip-serve")
    _described = f"on ({', '.join(names)}; service {resource.attributes.get('service.name')})"
    return True


def require(settings: "Settings") -> None:
    """Raise TracingUnavailable, with the remedy, when the configuration asks for traces and the SDK is missing.
    The supervisor asks before it starts any process (service/supervisor.py), so one message says it, once."""
    if not wanted(settings):
        return
    try:
        import opentelemetry.sdk.trace  # noqa: F401
        import opentelemetry.sdk.trace.export  # noqa: F401
    except ImportError as exc:
        raise TracingUnavailable(f"tracing is on ({_why()}) but the OpenTelemetry SDK is not installed: "
                                 f"{EXTRA_HINT}, or unset those variables ({exc})") from exc


def _exporter_names() -> list[str]:
    raw = os.environ.get("OTEL_TRACES_EXPORTER", "")
    return [n.strip().lower() for n in raw.split(",") if n.strip()]


def _why() -> str:
    set_ = [k for k in ("CLIP_OTEL", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
                        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") if os.environ.get(k)]
    return ", ".join(set_) or "CLIP_OTEL"


def _exporters(names: list[str]) -> list[Any]:
    out = []
    for name in names:
        if name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            out.append(ConsoleSpanExporter())
        elif name == "otlp":
            protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")
            if protocol != "http/protobuf":
                raise TracingUnavailable(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: this server exports OTLP over "
                                         f"http/protobuf only (port 4318 of a collector, Jaeger or Tempo)")
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError as exc:
                raise TracingUnavailable(f"OTEL_TRACES_EXPORTER=otlp needs the OTLP exporter: {EXTRA_HINT} "
                                         f"({exc})") from exc
            out.append(OTLPSpanExporter())  # endpoint, headers, timeout and compression from OTEL_EXPORTER_OTLP_*
        elif name != "none":
            raise TracingUnavailable(f"OTEL_TRACES_EXPORTER={name} is not supported here: use otlp, console or none")
    return out


def enabled() -> bool:
    return _tracer is not None


def describe() -> str:
    """One line for the start-up log: off, or on with its exporters and service name."""
    return _described


def shutdown() -> None:
    """Export what is still buffered and stop (the process skips the interpreter's teardown, so no atexit runs)."""
    global _tracer, _provider, _described
    if _provider is not None:  # in a thread, to bound the wait: the SDK's own bound is its 30 s join
        closing = threading.Thread(target=_provider.shutdown, name="tracing-shutdown", daemon=True)
        closing.start()
        closing.join(SHUTDOWN_FLUSH_S)
        if closing.is_alive():
            log.warning("spans not exported within %.0fs of shutdown (is the collector down?); dropping them",
                        SHUTDOWN_FLUSH_S)
    _tracer = _provider = None
    _described = "off"


# --- the request span ---------------------------------------------------------------------------------------
class TraceRequests:
    """ASGI middleware: one server span per HTTP request, current while the app handles it. Added only when tracing
    is on (service/app.py). Probes and scrapes are not traced: one trace every few seconds per probe says nothing."""

    UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: "Scope", receive: "Receive", send: "Send") -> None:
        if scope["type"] != "http" or _tracer is None or scope["path"] in self.UNTRACED:
            return await self.app(scope, receive, send)
        from opentelemetry import context, propagate, trace
        from opentelemetry.trace import SpanKind

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        parent = propagate.extract(headers)  # W3C traceparent (OTEL_PROPAGATORS); none: a new trace
        span = _tracer.start_span(scope["method"], context=parent, kind=SpanKind.SERVER,
                                  attributes=_request_attributes(scope, headers))
        status = 500  # what the client gets if the app raises before answering

        async def send_status(message: "Message") -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        token = context.attach(trace.set_span_in_context(span, parent))
        try:
            await self.app(scope, receive, send_status)
        except BaseException as exc:
            span.record_exception(exc)
            raise
        finally:
            context.detach(token)
            _finish_request(span, scope, status)


def _request_attributes(scope: "Scope", headers: dict[str, str]) -> dict[str, Any]:
    attrs: dict[str, Any] = {"http.request.method": scope["method"], "url.path": scope["path"],
                             "url.scheme": scope.get("scheme", "http"),
                             "network.protocol.version": scope.get("http_version", "1.1")}
    if scope.get("client"):
        attrs["client.address"] = scope["client"][0]
    if scope.get("server"):
        attrs["server.address"], attrs["server.port"] = scope["server"][0], scope["server"][1] or 0
    if "user-agent" in headers:
        attrs["user_agent.original"] = headers["user-agent"]
    return attrs


def _finish_request(span: "Span", scope: "Scope", status: int) -> None:
    from opentelemetry.trace import StatusCode

    from service.connections import CUT_OFF

    status = scope.get("extensions", {}).get(CUT_OFF, status)  # cut off by us: the app saw a disconnect
    route = getattr(scope.get("route"), "path", None)  # the template: /labelsets/{name}, never the raw path
    if route:
        span.update_name(f"{scope['method']} {route}")
        span.set_attribute("http.route", route)
    span.set_attribute("http.response.status_code", status)
    items = scope.get("state", {}).get("items")
    if items is not None:
        span.set_attribute("clip.items", items)
    if status >= 500:  # a server span's 4xx is the client's error: status left unset (HTTP semantic conventions)
        span.set_attribute("error.type", str(status))
        span.set_status(StatusCode.ERROR)
    span.end()


def record_error(exc: BaseException) -> None:
    """An error that was answered (an ApiError turned into a response), as an event on the current span."""
    if _tracer is None:
        return
    from opentelemetry import trace

    trace.get_current_span().record_exception(exc, attributes={"error.type": getattr(exc, "type", "")})


# --- child spans ----------------------------------------------------------------------------------------------
def capture() -> Optional["Context"]:
    """The current context, to parent spans started in another thread (worker pools do not inherit it); None
    when tracing is off."""
    if _tracer is None:
        return None
    from opentelemetry import context

    return context.get_current()


def span(name: str, parent: Optional["Context"], attributes: Optional[dict[str, Any]] = None
         ) -> AbstractContextManager:
    """A child span of `parent` (from `capture` or `context_from`) around a block; an exception leaving the block is
    recorded on it and sets its status to ERROR. A no-op when tracing is off or there is no parent."""
    if _tracer is None or parent is None:
        return _NOOP
    return _tracer.start_as_current_span(name, context=parent, attributes=attributes)


class QueueWait:
    """One request's items in one batcher's queue: the queue_wait span, ended when the last item is taken into a
    batch (or when the request stops waiting), and the request span the inference spans link to."""

    __slots__ = ("span", "request", "left")

    def __init__(self, span: "Span", request: "SpanContext", n: int):
        self.span, self.request, self.left = span, request, n

    def taken(self) -> None:
        """One of the items left the queue for a batch (called on the event loop, like `close`)."""
        self.left -= 1
        if self.left == 0:
            self.span.end()

    def close(self) -> None:
        """The request stopped waiting (answered, failed or gone): end the span if items never left the queue."""
        if self.left > 0:
            self.span.set_attribute("clip.queue.abandoned", self.left)
            self.left = 0
            self.span.end()


def queued(modality: str, n: int, parent: Optional["Context"] = None) -> Optional[QueueWait]:
    """Start the queue_wait span of n items about to be queued, under `parent` (default: the current context, the
    request span). None when tracing is off: the batcher then does nothing more for tracing."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    parent = parent if parent is not None else capture()
    request = trace.get_current_span(parent).get_span_context()
    if not request.is_valid:
        return None
    span = _tracer.start_span("queue_wait", context=parent,
                              attributes={"clip.modality": modality, "clip.queue.items": n})
    return QueueWait(span, request, n)


def inference(modality: str, batch_size: int, waits: Iterable[Optional[QueueWait]]) -> AbstractContextManager:
    """The span of one encoder call over a batch, linked to the request span of every request it serves; current
    around the block (call it in the thread that runs the encoder). A no-op when tracing is off."""
    if _tracer is None:
        return _NOOP
    # distinct request spans, in batch order (a SpanContext is not hashable: its trace state is a mapping)
    requests = list({(w.request.trace_id, w.request.span_id): w.request for w in waits if w is not None}.values())
    if not requests:
        return _NOOP
    from opentelemetry import trace
    from opentelemetry.trace import Link, NonRecordingSpan

    lead = next((r for r in requests if r.trace_flags.sampled), requests[0])  # not lost with an unsampled parent
    parent = trace.set_span_in_context(NonRecordingSpan(lead))
    return _tracer.start_as_current_span("inference", context=parent, links=[Link(r) for r in requests],
                                         attributes={"clip.modality": modality, "clip.batch_size": batch_size})


# --- across processes ---------------------------------------------------------------------------------------
def traceparent(context: Optional["Context"] = None) -> Optional[str]:
    """The W3C traceparent of `context`'s span (default: the current one), e.g.
    '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'; None when tracing is off or there is no span."""
    if _tracer is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context)
    return carrier.get("traceparent")


def attached(context: Optional["Context"]) -> AbstractContextManager:
    """`context` current around a block of this task or thread: the engine process wraps the call that queues a
    request's items in `attached(context_from(text))`, so `queued` finds the remote request span as it finds the local
    one. A no-op when tracing is off or `context` is None."""
    if _tracer is None or context is None:
        return _NOOP
    return _attach(context)


@contextmanager
def _attach(context: "Context") -> Iterator[None]:
    from opentelemetry import context as otel_context

    token = otel_context.attach(context)
    try:
        yield
    finally:
        otel_context.detach(token)


def context_from(traceparent: Optional[str]) -> Optional["Context"]:
    """The context a `traceparent()` string was made from (its span as a remote parent); None when tracing is off,
    or for None or a malformed string."""
    if _tracer is None or not traceparent:
        return None
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    context = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
    return context if trace.get_current_span(context).get_span_context().is_valid else None
