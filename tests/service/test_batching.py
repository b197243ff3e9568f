"""Dynamic batching, the prompt cache and admission control, observed through the real server's metrics."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.service.conftest import encode, shape_image
from tests.service.server import ServerProcess, metric_value


def _metrics(server) -> str:
    return httpx.get(server.url + "/metrics").text


async def _burst(url: str, n: int, make_kwargs) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=n)) as client:
        return await asyncio.gather(*(client.post(url, **make_kwargs(i)) for i in range(n)))


@pytest.fixture(scope="module")
def server(bundled_dir, tmp_path_factory):
    """This module's own server (not the shared one): the metric deltas below count only this module's requests,
    whatever ran before it."""
    proc = ServerProcess({"CLIP_MODEL": str(bundled_dir), "CLIP_IMAGE_MAX_WAIT_MS": "20"},
                         tmp_path_factory.mktemp("batching") / "server.log").wait_ready()
    yield proc
    proc.stop()


def test_concurrent_requests_form_batches_larger_than_one(server):
    before = _metrics(server)
    blob = encode(shape_image("cyan", "diamond"))
    responses = asyncio.run(_burst(server.url + "/embed/image", 32, lambda i: {"files": [("file", ("x.png", blob))]}))
    assert all(r.status_code == 200 for r in responses)
    after = _metrics(server)
    items = metric_value(after, "clip_batch_size_sum", modality="image") - \
        metric_value(before, "clip_batch_size_sum", modality="image")
    batches = metric_value(after, "clip_batch_size_count", modality="image") - \
        metric_value(before, "clip_batch_size_count", modality="image")
    assert items == 32 and batches < 32, f"{items} items in {batches} batches"


def test_cached_prompts_skip_the_text_encoder(server):
    texts = {"texts": ["a cached prompt about a star", "another cached prompt"]}
    httpx.post(server.url + "/embed/text", json=texts)
    before = _metrics(server)
    again = httpx.post(server.url + "/embed/text", json=texts)
    assert again.status_code == 200
    after = _metrics(server)
    assert metric_value(after, "clip_batch_size_count", modality="text") == \
        metric_value(before, "clip_batch_size_count", modality="text")
    assert metric_value(after, "clip_cache_hits_total", cache="text") - \
        metric_value(before, "clip_cache_hits_total", cache="text") == 2


def test_repeated_classify_reuses_the_label_set_classifier(server):
    data = {"labels": ["red circle", "blue square", "tiny purple cross"], "templates": ["a {}.", "one {}"]}
    blob = encode(shape_image("red", "circle"))
    httpx.post(server.url + "/classify", files=[("file", ("a.png", blob))], data=data)
    before = _metrics(server)
    httpx.post(server.url + "/classify", files=[("file", ("a.png", blob))], data=data)
    after = _metrics(server)
    assert metric_value(after, "clip_cache_hits_total", cache="labelset") == \
        metric_value(before, "clip_cache_hits_total", cache="labelset") + 1
    assert metric_value(after, "clip_batch_size_count", modality="text") == \
        metric_value(before, "clip_batch_size_count", modality="text")


@pytest.fixture(scope="module")
def small_queue_server(bundled_dir, tmp_path_factory):
    proc = ServerProcess({"CLIP_MODEL": str(bundled_dir), "CLIP_MAX_QUEUE": "8", "CLIP_IMAGE_MAX_BATCH": "4",
                          "CLIP_IMAGE_MAX_WAIT_MS": "50"},
                         tmp_path_factory.mktemp("smallq") / "server.log").wait_ready()
    yield proc
    proc.stop()


def test_full_queue_gives_503_with_retry_after_while_others_succeed(small_queue_server):
    blob = encode(shape_image("pink", "circle").resize((256, 256)))
    responses = asyncio.run(_burst(small_queue_server.url + "/embed/image", 40,
                                   lambda i: {"files": [("file", ("x.png", blob))] * 4}))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
    for r in responses:
        if r.status_code == 503:
            assert int(r.headers["Retry-After"]) >= 1 and r.json()["error"]["type"] == "overloaded"
    assert metric_value(_metrics(small_queue_server), "clip_rejected_total", reason="queue_full") >= codes.count(503)
    assert httpx.post(small_queue_server.url + "/embed/text", json={"texts": ["fine"]}).status_code == 200
