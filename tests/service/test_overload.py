"""Overload against a small queue (CLIP_MAX_QUEUE=16).

A burst of 300 concurrent requests: only 200s and 503s, every 503 with Retry-After and counted in
clip_rejected_total{reason="queue_full"}. While the queue is full, a new request is refused at once: admission
is checked right after parsing, before any decoding, so a refusal takes a small fraction of one decode of the
same image, a ratio measured in the same test (absolute milliseconds on a loaded 2-core machine mean little).

Latencies come from the server's own access log (arrival to response) and from the client; the tests print
both. In a single burst all 300 requests share one event loop, so each one's time in the server is about
300 x the ~1-3 ms it takes to parse one: the burst's latencies are printed, not bounded (the held-queue test
bounds a refusal's time).
"""

from __future__ import annotations

import asyncio
import io
import json
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.service.conftest import encode, shape_image
from tests.service.server import ServerProcess, metric_value

BURST = 300
PROBES = 20
# A refusal must take under this fraction of one decode of the image it refuses, in the median over the probes.
# Measured on a loaded 2-core machine: 7 ms against 540 ms (1/70), so 1/5 holds with room, while decoding before
# admission (or waiting for the queued work) makes every refusal a decode or more. Not the maximum: one probe in
# 20 took 227 ms there, the event loop stalled by other processes, which says nothing about admission.
REFUSAL_MEDIAN_FRACTION = 0.2


@pytest.fixture(scope="module")
def overload_server(bundled_dir, tmp_path_factory):
    # one encoder thread: on a 2-core box the event loop keeps a core, as it would on a GPU host
    proc = ServerProcess({"CLIP_MODEL": str(bundled_dir), "CLIP_MAX_QUEUE": "16", "CLIP_IMAGE_MAX_BATCH": "4",
                          "CLIP_IMAGE_MAX_WAIT_MS": "20", "CLIP_PREPROCESS_WORKERS": "1", "CLIP_THREADS": "1",
                          "CLIP_REQUEST_TIMEOUT_S": "60"},
                         tmp_path_factory.mktemp("overload") / "server.log").wait_ready()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def blob() -> bytes:
    return encode(shape_image("pink", "circle").resize((256, 256)))


def access_log(server: ServerProcess) -> list[dict]:
    """The server's JSON access-log entries for /embed/image, in order."""
    out = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        if "service.access" in line and "{" in line:
            entry = json.loads(line[line.index("{"):])
            if entry["endpoint"] == "/embed/image":
                out.append(entry)
    return out


def ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def test_burst_gives_only_200s_and_503s_with_retry_after(overload_server, blob, record_property):
    url = overload_server.url
    before_log = len(access_log(overload_server))
    before = metric_value(httpx.get(url + "/metrics").text, "clip_rejected_total", reason="queue_full")

    async def burst() -> list[tuple[httpx.Response, float]]:
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=BURST)) as client:
            async def one():
                start = time.perf_counter()
                r = await client.post(url + "/embed/image", files=[("file", ("x.png", blob))])
                return r, (time.perf_counter() - start) * 1000

            return await asyncio.gather(*(one() for _ in range(BURST)))

    results = asyncio.run(burst())
    codes = [r.status_code for r, _ in results]
    assert set(codes) <= {200, 503}, sorted(set(codes))
    assert codes.count(200) >= 16 and codes.count(503) > 0, (codes.count(200), codes.count(503))
    for r, _ in results:
        if r.status_code == 503:
            assert int(r.headers["Retry-After"]) >= 1 and r.json()["error"]["type"] == "overloaded"
        else:
            assert len(r.json()["embeddings"]) == 1
    server_ms = [e["ms"] for e in access_log(overload_server)[before_log:] if e["status"] == 503]
    client_ms = [t for r, t in results if r.status_code == 503]
    assert len(server_ms) == codes.count(503)
    summary = (f"burst of {BURST}: {codes.count(200)} x 200, {codes.count(503)} x 503; 503s in the server p50 "
               f"{ms(server_ms, 50):.0f} ms p99 {ms(server_ms, 99):.0f} ms; at the client p50 {ms(client_ms, 50):.0f} "
               f"ms p99 {ms(client_ms, 99):.0f} ms")
    print(summary)
    record_property("burst", summary)
    after = metric_value(httpx.get(url + "/metrics").text, "clip_rejected_total", reason="queue_full")
    assert after - before == codes.count(503)
    assert metric_value(httpx.get(url + "/metrics").text, "clip_queue_depth", modality="image") == 0
    assert httpx.post(url + "/embed/image", files=[("file", ("x.png", blob))]).status_code == 200


@pytest.fixture(scope="module")
def slow_png() -> bytes:
    """A 3000 x 3000 gradient: ~1 MB of PNG that takes a few hundred ms to decode."""
    x = np.linspace(0, 255, 3000, dtype=np.float32)
    arr = np.stack([np.add.outer(x, x) / 2, np.add.outer(x, -x) / 2 + 128, np.outer(np.ones(3000), x)], -1)
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def test_while_the_queue_is_full_a_refusal_takes_a_fraction_of_a_decode(overload_server, slow_png, record_property):
    """Hold the queue full with slow-to-decode images (admission counts them from before decoding), then probe
    it one request at a time with the same slow image: a probe is refused in a fraction of the time a decode of
    it takes, so neither after decoding it nor after the queued work; and it is never decoded."""
    url = overload_server.url
    before_log = len(access_log(overload_server))
    before = httpx.get(url + "/metrics").text

    async def scenario() -> tuple[list, list, float]:
        async with httpx.AsyncClient(timeout=120) as client:
            holders = [asyncio.ensure_future(client.post(url + "/embed/image",
                                                         files=[("file", ("big.png", slow_png))] * 4))
                       for _ in range(4)]  # 16 items = CLIP_MAX_QUEUE
            depth, limit = 0.0, time.monotonic() + 60
            while depth < 16 and time.monotonic() < limit:
                depth = metric_value((await client.get(url + "/metrics")).text, "clip_queue_depth", modality="image")
                await asyncio.sleep(0.01)
            probes = []
            for _ in range(PROBES if depth >= 16 else 0):
                r = await client.post(url + "/embed/image", files=[("file", ("big.png", slow_png))])
                probes.append((r.status_code, r.headers.get("Retry-After")))
                if r.status_code != 503:
                    break
            return probes, [(r.status_code, r.text[:200]) for r in await asyncio.gather(*holders)], depth

    probes, holders, depth = asyncio.run(scenario())
    assert depth >= 16, f"the holders never filled the queue (depth {depth:g})"
    assert [status for status, _ in holders] == [200] * 4, holders  # the work that filled the queue completes
    refused = [p for p in probes if p[0] == 503]
    assert len(refused) >= PROBES // 2 and all(ra for _, ra in refused), probes
    after = httpx.get(url + "/metrics").text
    decodes = metric_value(after, "clip_preprocess_seconds_count", modality="image") - \
        metric_value(before, "clip_preprocess_seconds_count", modality="image")
    decode_ms = 1000 * (metric_value(after, "clip_preprocess_seconds_sum", modality="image")
                        - metric_value(before, "clip_preprocess_seconds_sum", modality="image")) / decodes
    # a probe that came after the holders' first request finished is admitted (the loop stops there) and decoded:
    # seen once on a loaded fresh clone, 19 refused and the 20th admitted as room came free
    admitted = sum(status == 200 for status, _ in probes)
    assert decodes == 16 + admitted, f"{decodes:g} images decoded: the holders' 16 and {admitted} admitted probe(s), " \
                                     f"never a refused probe's"
    server_ms = [e["ms"] for e in access_log(overload_server)[before_log:] if e["status"] == 503]
    assert len(server_ms) == len(refused)
    summary = (f"queue held full: {len(refused)} probes refused in p50 {ms(server_ms, 50):.1f} ms, max "
               f"{max(server_ms):.1f} ms (server side); one decode of the same image: {decode_ms:.0f} ms")
    print(summary)
    record_property("queue_full_probe", summary)
    assert ms(server_ms, 50) < REFUSAL_MEDIAN_FRACTION * decode_ms, summary


def test_a_request_larger_than_the_whole_queue_is_413_not_503(overload_server, blob):
    r = httpx.post(overload_server.url + "/embed/image", files=[("file", ("x.png", blob))] * 17)
    assert r.status_code == 413 and "CLIP_MAX_QUEUE" in r.json()["error"]["message"]
