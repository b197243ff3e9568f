"""service/tracing.py's helpers, with the SDK's in-memory exporter (the server: tests/service/test_tracing.py)."""

from __future__ import annotations

import re

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, StatusCode, TraceFlags

from service import tracing
from service.settings import Settings

OTEL_VARS = ("OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
             "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
             "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES")


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    for name in OTEL_VARS:
        monkeypatch.delenv(name, raising=False)
    yield
    tracing.shutdown()


@pytest.fixture
def spans(monkeypatch) -> InMemorySpanExporter:
    """Tracing on, into memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer("test"))
    return exporter


def finished(exporter: InMemorySpanExporter, name: str) -> list:
    return [s for s in exporter.get_finished_spans() if s.name == name]


@pytest.mark.parametrize("env, otel, on", [
    ({}, None, False),
    ({}, True, True),
    ({"OTEL_TRACES_EXPORTER": "console"}, None, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, None, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, None, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False, False),  # CLIP_OTEL=false wins
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"}, None, False),
    ({"OTEL_SDK_DISABLED": "true"}, True, False),
    ({"OTEL_SDK_DISABLED": "false"}, True, True),
])
def test_wanted(monkeypatch, env, otel, on):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert tracing.wanted(Settings(otel=otel)) is on


def test_every_hook_is_a_no_op_when_off():
    assert not tracing.enabled()
    assert tracing.capture() is None and tracing.queued("image", 2) is None
    assert tracing.traceparent() is None and tracing.context_from("00-" + "1" * 32 + "-" + "2" * 16 + "-01") is None
    assert tracing.span("decode", None) is tracing.inference("image", 3, [None, None]) is tracing._NOOP
    tracing.record_error(ValueError("nothing to record it on"))


def test_a_traceparent_string_carries_the_span_across_processes(spans):
    tracer = tracing._tracer
    with tracer.start_as_current_span("request") as request:
        carried = tracing.traceparent()
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", carried) and int(carried[-2:], 16) & 1  # sampled
    # ... a str in a frame to another process, then:
    with tracing.span("decode", tracing.context_from(carried)):
        pass
    (decode,) = finished(spans, "decode")
    assert decode.context.trace_id == request.get_span_context().trace_id
    assert decode.parent.span_id == request.get_span_context().span_id and decode.parent.is_remote


@pytest.mark.parametrize("text", [None, "", "garbage", "00-" + "0" * 32 + "-" + "0" * 16 + "-01"])
def test_context_from_a_malformed_traceparent_is_none(spans, text):
    assert tracing.context_from(text) is None


def test_span_records_the_error_leaving_it(spans):
    with tracing._tracer.start_as_current_span("request"):
        parent = tracing.capture()
    with pytest.raises(ValueError):
        with tracing.span("decode", parent, {"clip.image.index": 1}):
            raise ValueError("bad pixels")
    (decode,) = finished(spans, "decode")
    assert decode.status.status_code == StatusCode.ERROR and decode.events[0].name == "exception"
    assert decode.attributes["clip.image.index"] == 1


def test_queue_wait_ends_when_its_last_item_is_taken(spans):
    with tracing._tracer.start_as_current_span("request"):
        wait = tracing.queued("image", 2)
    wait.taken()
    assert not finished(spans, "queue_wait")
    wait.taken()
    wait.close()  # the request's answer comes later: no second end
    (span,) = finished(spans, "queue_wait")
    assert span.attributes["clip.queue.items"] == 2 and "clip.queue.abandoned" not in span.attributes


def test_queue_wait_of_a_request_that_stopped_waiting(spans):
    with tracing._tracer.start_as_current_span("request"):
        wait = tracing.queued("text", 3)
    wait.taken()
    wait.close()
    (span,) = finished(spans, "queue_wait")
    assert span.attributes["clip.queue.abandoned"] == 2


def _remote(sampled: bool):
    """A request span from elsewhere (a caller, or the front-end process), as a context."""
    ctx = SpanContext(int.from_bytes(bytes(range(1, 17)), "big") + sampled, 0x1234 + sampled, is_remote=True,
                      trace_flags=TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT))
    return trace.set_span_in_context(NonRecordingSpan(ctx)), ctx


def test_an_inference_span_links_each_request_once_and_sits_under_a_sampled_one(spans):
    (quiet, quiet_ctx), (loud, loud_ctx) = _remote(False), _remote(True)
    first, second = tracing.queued("image", 2, quiet), tracing.queued("image", 1, loud)
    with tracing.inference("image", 3, [first, first, second]):
        pass
    (span,) = finished(spans, "inference")
    assert [link.context for link in span.links] == [quiet_ctx, loud_ctx]
    assert span.parent.span_id == loud_ctx.span_id, "an unsampled first request would drop the batch's span"
    assert span.attributes["clip.batch_size"] == 3 and span.attributes["clip.modality"] == "image"


def test_setup_reads_the_standard_variables(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    assert tracing.setup(Settings()) and tracing.enabled()
    assert tracing.describe() == "on (console; service clip-serve)"
    tracing.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "clip-eu-1")
    tracing.setup(Settings())
    assert tracing._provider.resource.attributes["service.name"] == "clip-eu-1"


@pytest.mark.parametrize("env, says", [
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER=zipkin"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "http/protobuf"),
])
def test_setup_refuses_what_it_cannot_export_to(monkeypatch, env, says):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(tracing.TracingUnavailable, match=re.escape(says)):
        tracing.setup(Settings())
    assert not tracing.enabled()


def test_an_encoder_failure_is_an_error_on_the_inference_span(spans):
    with tracing._tracer.start_as_current_span("request"):
        wait = tracing.queued("image", 1)
    with pytest.raises(RuntimeError):
        with tracing.inference("image", 1, [wait]):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
    (span,) = finished(spans, "inference")
    assert span.status.status_code == StatusCode.ERROR and span.events[0].name == "exception"


def test_an_unsampled_request_stays_unsampled_across_processes(spans):
    quiet, quiet_ctx = _remote(False)
    carried = tracing.traceparent(quiet)
    assert carried.endswith("-00") and f"{quiet_ctx.trace_id:032x}" in carried
    with tracing.span("decode", tracing.context_from(carried)):
        pass
    assert not spans.get_finished_spans()


def test_a_carried_context_attached_around_queuing_parents_queue_wait_and_inference(spans):
    """The engine process's side: a request's traceparent arrives in a frame; its items are queued under it."""
    with tracing._tracer.start_as_current_span("request") as request:
        carried = tracing.traceparent()
    with tracing.attached(tracing.context_from(carried)):
        wait = tracing.queued("image", 1)
    assert tracing.capture() is not None and trace.get_current_span().get_span_context().is_valid is False
    wait.taken()
    with tracing.inference("image", 1, [wait]):
        pass
    remote = request.get_span_context()
    for name in ("queue_wait", "inference"):
        (span,) = finished(spans, name)
        assert (span.context.trace_id, span.parent.span_id) == (remote.trace_id, remote.span_id), name
    assert tracing.attached(None) is tracing._NOOP
