"""What the tracing hooks cost one request, in the process: off (the default) and on.

    .venv/bin/python scripts/tracing_cost.py

A one-image /embed/image passes every hook once: capture() for the decode workers, one decode span, queued() with
taken() and close() around the batcher's queue, and one inference span; on, the request span around them. "On" uses
the SDK with a batch span processor, as the server does, and an exporter that drops the spans, so the number is the
request path's share, not the exporter's (that runs in the processor's thread). Best of 5 repeats.
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service import tracing  # noqa: E402

N = 20_000


def one_request() -> None:
    parent = tracing.capture()
    with tracing.span("decode", parent, {"clip.image.index": 0, "clip.image.bytes": 1000}):
        pass
    wait = tracing.queued("image", 1)
    if wait is not None:
        wait.taken()
    with tracing.inference("image", 1, [wait]):
        pass
    if wait is not None:
        wait.close()


def per_request_us(fn) -> float:
    return min(timeit.repeat(fn, number=N, repeat=5)) / N * 1e6


def main() -> None:
    print(f"off: {per_request_us(one_request):.2f} us per request")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    tracing._tracer = tracer = provider.get_tracer("tracing_cost")

    def traced() -> None:
        with tracer.start_as_current_span("POST /embed/image"):
            one_request()

    print(f"on:  {per_request_us(traced):.2f} us per request (4 spans)")
    provider.shutdown()


if __name__ == "__main__":
    main()
