"""Tracing in a started server: its real OTLP/HTTP exporter sends to a receiver in the test process
(tests/service/otlp_receiver.py), and the spans are checked as a trace back end would see them."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys

import httpx
import pytest

from service import tracing
from service.app import create_app
from service.settings import Settings
from tests.service.app_thread import serve
from tests.service.conftest import encode, shape_image
from tests.service.fake_backend import COLOURS, NamedBackend
from tests.service.fake_backend import png as fake_png
from tests.service.otlp_receiver import SERVER_KIND, STATUS_ERROR, OtlpReceiver, Span, trace_of
from tests.service.server import ROOT, ServerProcess

BURST = 8


def traceparent(sampled: bool = True) -> tuple[str, str, str]:
    """A caller's W3C traceparent header: (header, trace id, span id)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}", trace_id, span_id


def without_otel_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CLIP_OTEL"))}


@pytest.fixture(scope="module")
def receiver():
    r = OtlpReceiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def traced(bundled_dir, receiver, tmp_path_factory):
    """A server exporting to the receiver through the standard variables. The image batcher waits 300 ms for more
    items, so concurrent requests ride in one batch even on a loaded machine."""
    proc = ServerProcess({"CLIP_MODEL": str(bundled_dir), "CLIP_IMAGE_MAX_WAIT_MS": "300", "CLIP_DRAIN_S": "1",
                          "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "50"},
                         tmp_path_factory.mktemp("traced") / "server.log").wait_ready()
    yield proc
    proc.stop()


def request_span(spans: list[Span], trace_id: str) -> Span | None:
    return next((s for s in spans if s.trace_id == trace_id and s.kind == SERVER_KIND), None)


def png(colour: str = "red") -> bytes:
    return encode(shape_image(colour, "circle"))


def test_a_request_span_with_decode_queue_wait_and_inference_children(traced, receiver):
    header, trace_id, caller = traceparent()
    files = [("file", (f"{i}.png", png(c))) for i, c in enumerate(("red", "green", "blue"))]
    r = httpx.post(traced.url + "/embed/image", files=files, headers={"traceparent": header}, timeout=60)
    assert r.status_code == 200

    def complete(spans):
        req = request_span(spans, trace_id)
        return (req, trace_of(spans, req)) if req and "inference" in trace_of(spans, req) else None

    req, children = receiver.wait_for(complete)
    assert req.parent_id == caller, "the request span continues the caller's trace (traceparent)"
    assert req.name == "POST /embed/image" and req.service == "clip-serve"
    assert req.attributes["http.route"] == "/embed/image" and req.attributes["http.request.method"] == "POST"
    assert req.attributes["http.response.status_code"] == 200 and req.attributes["clip.items"] == 3
    assert req.status != STATUS_ERROR
    assert sorted(s.attributes["clip.image.index"] for s in children["decode"]) == [0, 1, 2], "one per image"
    (wait,) = children["queue_wait"]
    assert wait.attributes["clip.queue.items"] == 3 and wait.attributes["clip.modality"] == "image"
    assert "clip.queue.abandoned" not in wait.attributes, "ended when its items were taken, not when abandoned"
    (inference,) = children["inference"]
    assert inference.attributes["clip.batch_size"] == 3
    assert inference.links == [(trace_id, req.span_id)]


def test_concurrent_requests_share_an_inference_span_linked_to_each(traced, receiver):
    calls = [traceparent() for _ in range(BURST)]

    async def burst():
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(client.post(traced.url + "/embed/image", headers={"traceparent": h},
                                                      files=[("file", ("x.png", png()))]) for h, _, _ in calls))

    assert all(r.status_code == 200 for r in asyncio.run(burst()))
    trace_ids = {t for _, t, _ in calls}

    def all_linked(spans):
        requests = {s.trace_id: s for s in spans if s.kind == SERVER_KIND and s.trace_id in trace_ids}
        batches = [s for s in spans if s.name == "inference" and {t for t, _ in s.links} & trace_ids]
        linked = {link for b in batches for link in b.links}
        wanted = {(t, s.span_id) for t, s in requests.items()}
        return (requests, batches) if len(requests) == BURST and wanted <= linked else None

    requests, batches = receiver.wait_for(all_linked)
    assert max(len(b.links) for b in batches) >= 2, f"no batch served two requests: {[b.links for b in batches]}"
    for b in batches:
        assert b.attributes["clip.batch_size"] == len(b.links), "one image per request: one link per item"
        assert (b.trace_id, b.parent_id) in b.links, "a batch span sits in the trace of a request it served"
    assert len(batches) < BURST


def test_a_bad_image_is_an_error_on_its_decode_span(traced, receiver):
    header, trace_id, _ = traceparent()
    files = [("file", ("a.png", png())), ("file", ("b.png", b"not an image"))]
    r = httpx.post(traced.url + "/embed/image", files=files, headers={"traceparent": header}, timeout=60)
    assert r.status_code == 400

    def decoded(spans):
        req = request_span(spans, trace_id)
        return (req, trace_of(spans, req)) if req and len(trace_of(spans, req).get("decode", [])) == 2 else None

    req, children = receiver.wait_for(decoded)
    bad = next(s for s in children["decode"] if s.attributes["clip.image.index"] == 1)
    good = next(s for s in children["decode"] if s.attributes["clip.image.index"] == 0)
    assert bad.status == STATUS_ERROR and "exception" in bad.events and good.status != STATUS_ERROR
    assert "exception" in req.events, "the answered error is on the request span"
    assert req.status != STATUS_ERROR and req.attributes["http.response.status_code"] == 400, "a 4xx is not ours"
    assert "queue_wait" not in children and "inference" not in children


def test_route_templates_name_spans_and_requests_without_traceparent_start_a_trace(traced, receiver):
    r = httpx.put(traced.url + "/labelsets/tracing-test", json={"labels": ["red circle", "blue square"]}, timeout=60)
    assert r.status_code in (200, 201), r.text
    assert httpx.get(traced.url + "/info", timeout=30).status_code == 200

    def found(spans):
        put = next((s for s in spans if s.attributes.get("url.path") == "/labelsets/tracing-test"), None)
        info = next((s for s in spans if s.name == "GET /info"), None)
        return (put, info) if put and info else None

    put, info = receiver.wait_for(found)
    assert put.name == "PUT /labelsets/{name}" and put.attributes["http.route"] == "/labelsets/{name}"
    assert info.parent_id == "", "no traceparent: a new trace, the request span its root"
    texts = trace_of(receiver.snapshot(), put)
    assert texts["queue_wait"][0].attributes["clip.modality"] == "text" and "decode" not in texts


def test_an_unsampled_caller_gets_no_spans(traced, receiver):
    quiet, quiet_trace, _ = traceparent(sampled=False)
    loud, loud_trace, _ = traceparent()
    for header in (quiet, loud):  # one after the other: the first one's spans ended before the second's began
        assert httpx.post(traced.url + "/embed/image", files=[("file", ("x.png", png()))],
                          headers={"traceparent": header}, timeout=60).status_code == 200
    receiver.wait_for(lambda spans: request_span(spans, loud_trace))
    assert not [s for s in receiver.snapshot() if s.trace_id == quiet_trace]


def test_probes_are_not_traced(traced, receiver):
    header, trace_id, _ = traceparent()
    for path in ("/healthz", "/readyz", "/metrics"):
        httpx.get(traced.url + path, headers={"traceparent": header}, timeout=30)
    marker_header, marker, _ = traceparent()
    httpx.get(traced.url + "/info", headers={"traceparent": marker_header}, timeout=30)
    receiver.wait_for(lambda spans: request_span(spans, marker))
    assert not [s for s in receiver.snapshot() if s.trace_id == trace_id]


def parent_chain_reaches(spans: list[Span], span: Span, ancestor: Span) -> bool:
    """Whether `ancestor` is `span`'s parent, or its parent's, and so on, among the spans of its trace."""
    by_id = {s.span_id: s for s in spans if s.trace_id == span.trace_id}
    seen = set()
    while span.parent_id and span.parent_id not in seen:
        if span.parent_id == ancestor.span_id:
            return True
        seen.add(span.parent_id)
        span = by_id.get(span.parent_id)
        if span is None:
            return False
    return False


def test_split_mode_traces_the_engine_process_under_the_request(bundled_dir, receiver, tmp_path):
    """CLIP_WORKERS=1: the front-end sends the request span's traceparent with each call, and the engine process
    exports its queue_wait and inference spans (its own OTLP exporter, same settings) in the request's trace."""
    proc = ServerProcess({"CLIP_MODEL": str(bundled_dir), "CLIP_WORKERS": "1", "CLIP_PREPROCESS_WORKERS": "2",
                          "CLIP_DRAIN_S": "1", "CLIP_OTEL": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                          "OTEL_BSP_SCHEDULE_DELAY": "50"}, tmp_path / "server.log").wait_ready()
    try:
        embed, embed_trace, _ = traceparent()
        classify, classify_trace, _ = traceparent()
        files = [("file", ("a.png", png("red"))), ("file", ("b.png", png("blue")))]
        assert httpx.post(proc.url + "/embed/image", files=files, headers={"traceparent": embed},
                          timeout=60).status_code == 200
        r = httpx.post(proc.url + "/classify", files=files, headers={"traceparent": classify}, timeout=60,
                       data={"labels": ["split red circle", "split blue square"]})  # not cached: texts encoded
        assert r.status_code == 200, r.text

        def engine_spans(trace_id: str, modalities: set[str]):
            def ready(spans):
                req = request_span(spans, trace_id)
                done = [s for s in spans if s.trace_id == trace_id and s.name in ("queue_wait", "inference")]
                got = {(s.name, s.attributes["clip.modality"]) for s in done}
                want = {(n, m) for n in ("queue_wait", "inference") for m in modalities}
                return (req, done) if req and want <= got else None
            return receiver.wait_for(ready)

        for trace_id, modalities in ((embed_trace, {"image"}), (classify_trace, {"image", "text"})):
            req, done = engine_spans(trace_id, modalities)
            spans = receiver.snapshot()
            for s in done:
                assert parent_chain_reaches(spans, s, req), f"{s.name} ({s.attributes}) not under {req.name}"
                assert s.service == "clip-serve"
            image_wait = next(s for s in done if s.name == "queue_wait" and s.attributes["clip.modality"] == "image")
            assert image_wait.attributes["clip.queue.items"] == 2
            inference = [s for s in done if s.name == "inference"]
            assert all((trace_id, req.span_id) in s.links for s in inference), "linked to the request it served"
            assert sorted(s.attributes["clip.image.index"] for s in trace_of(spans, req)["decode"]) == [0, 1]
    finally:
        assert proc.stop() == 0


def test_spans_still_buffered_at_shutdown_are_exported(bundled_dir, tmp_path):
    receiver = OtlpReceiver()
    try:
        proc = ServerProcess({"CLIP_MODEL": str(bundled_dir), "CLIP_DRAIN_S": "1",
                              "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "600000"},
                             tmp_path / "server.log").wait_ready()
        header, trace_id, _ = traceparent()
        try:
            assert httpx.post(proc.url + "/embed/image", files=[("file", ("x.png", png()))],
                              headers={"traceparent": header}, timeout=60).status_code == 200
            assert not receiver.snapshot(), "exported before the 10-minute schedule: nothing is left to check"
        finally:
            assert proc.stop() == 0
        names = {s.name for s in receiver.snapshot() if s.trace_id == trace_id}
        assert names == {"POST /embed/image", "decode", "queue_wait", "inference"}
    finally:
        receiver.close()


class FailingBackend(NamedBackend):
    def encode_image(self, pixels):
        raise RuntimeError("the image encoder broke")


def test_an_encoder_failure_is_an_error_on_the_inference_and_request_spans(monkeypatch, receiver):
    """In-process, on a backend whose image encoder fails: the 503 is the server's error."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    header, trace_id, _ = traceparent()
    try:
        with serve(create_app(Settings(), backend_factory=FailingBackend)) as url:
            r = httpx.post(url + "/embed/image", files=[("file", ("x.png", fake_png(COLOURS["fresh"])))],
                           headers={"traceparent": header}, timeout=60)
            assert r.status_code == 503 and r.json()["error"]["type"] == "backend_error", r.text

            def failed(spans):
                req = request_span(spans, trace_id)
                return (req, trace_of(spans, req)) if req and "inference" in trace_of(spans, req) else None

            req, children = receiver.wait_for(failed)
    finally:
        tracing.shutdown()
    (inference,) = children["inference"]
    assert inference.status == STATUS_ERROR and "exception" in inference.events
    assert req.status == STATUS_ERROR and req.attributes["error.type"] == "503" and "exception" in req.events


# ---------------------------------------------------------------------------------------------------------
# Off


def test_otel_sdk_disabled_keeps_it_off_whatever_else_is_set(bundled_dir, tmp_path):
    receiver = OtlpReceiver()
    try:
        proc = ServerProcess({"CLIP_MODEL": str(bundled_dir), "CLIP_DRAIN_S": "1", "CLIP_OTEL": "true",
                              "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "50",
                              "OTEL_SDK_DISABLED": "true"}, tmp_path / "server.log").wait_ready()
        try:
            assert httpx.post(proc.url + "/embed/image", files=[("file", ("x.png", png()))],
                              timeout=60).status_code == 200
        finally:
            assert proc.stop() == 0  # a server that traces exports what it holds on the way out
        assert receiver.posts == 0
        assert "tracing: off" in (tmp_path / "server.log").read_text()
    finally:
        receiver.close()


DEFAULT_IS_OFF = """
import sys
from service.app import create_app
from service.settings import Settings
from service import tracing
app = create_app(Settings())
assert not tracing.enabled() and tracing.describe() == "off"
assert tracing.TraceRequests not in [m.cls for m in app.user_middleware]
sdk = sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter")))
assert not sdk, sdk
print("ok")
"""


def test_off_by_default_without_the_sdk_imported():
    """No OTEL_* and no CLIP_OTEL: no tracing, no request middleware, and none of the SDK imported (FastAPI itself
    imports the OpenTelemetry API, which costs nothing per request)."""
    out = subprocess.run([sys.executable, "-c", DEFAULT_IS_OFF], cwd=ROOT, env=without_otel_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


WITHOUT_SDK = ("import sys, runpy; sys.modules['opentelemetry.sdk'] = None; "  # as if the extra were not installed
               "runpy.run_module('service', run_name='__main__', alter_sys=True)")


@pytest.mark.parametrize("workers", ["0", "1"])
def test_tracing_without_the_packages_fails_at_start_up_naming_the_extra(bundled_dir, workers):
    """Split (CLIP_WORKERS=1) too: the supervisor says it before starting any process (each would fail alike)."""
    env = {**without_otel_env(), "CLIP_MODEL": str(bundled_dir), "CLIP_OTEL": "true", "CLIP_PORT": "1",
           "CLIP_WORKERS": workers}
    out = subprocess.run([sys.executable, "-c", WITHOUT_SDK], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "clip-serve[otel]" in out.stderr and "CLIP_OTEL" in out.stderr
