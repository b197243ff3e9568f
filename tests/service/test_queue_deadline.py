"""The queue deadline end to end: items that wait in the queue past CLIP_REQUEST_TIMEOUT_S are never encoded,
their request answers 503 deadline_exceeded, and the refusal is counted in clip_rejected_total{reason="deadline"}.

A real HTTP server (uvicorn, in a thread) on a fake backend whose encoder holds a batch until the test releases
it, so what waits behind that batch and for how long is decided by the test, not by the machine's speed. The
backend records every item it encodes."""

from __future__ import annotations

import threading
import time
from typing import Optional

import httpx
import pytest

from service.settings import Settings
from tests.service.app_thread import serve
from tests.service.fake_backend import COLOURS, named_app, png
from tests.service.server import metric_value

TIMEOUT_S = 2.0  # CLIP_REQUEST_TIMEOUT_S: long enough for a request to reach the queue on a busy machine


class Call(threading.Thread):
    """One request in a thread of its own; `response` once it has answered."""

    def __init__(self, url: str, modality: str, name: str):
        super().__init__(daemon=True)
        self.url, self.modality, self.name = url, modality, name
        self.response: Optional[httpx.Response] = None
        self.start()

    def run(self) -> None:
        if self.modality == "text":
            self.response = httpx.post(self.url + "/embed/text", json={"texts": [self.name]}, timeout=120)
        else:
            self.response = httpx.post(self.url + "/embed/image", files=[("file", ("x.png", png(COLOURS[self.name])))],
                                       timeout=120)


def metrics(url: str) -> str:
    return httpx.get(url + "/metrics", timeout=30).text


def wait_until(condition, what: str, timeout_s: float = 60.0) -> None:
    limit = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < limit, f"timed out waiting until {what}"
        time.sleep(0.02)


@pytest.mark.parametrize("modality", ["text", "image"])
def test_items_past_their_deadline_in_the_queue_are_never_encoded(modality):
    app, backends = named_app(Settings(request_timeout_s=TIMEOUT_S, image_max_batch=8, text_max_batch=8))
    with serve(app) as url:
        backend = backends[0]

        def depth() -> float:  # queued + in-flight items
            return metric_value(metrics(url), "clip_queue_depth", modality=modality)

        held = Call(url, modality, "hold")  # takes the encoder and keeps it
        wait_until(lambda: backend.holding.is_set() or held.response is not None, "the first batch is encoding")
        assert held.response is None, f"answered before it reached the encoder: {held.response.text[:200]}"
        late = Call(url, modality, "late")  # queued behind it
        wait_until(lambda: depth() == 2 or late.response is not None, "the late item is queued")
        assert late.response is None, f"answered before it was queued: {late.response.text[:200]}"
        queued_at = time.monotonic()  # its deadline is at most TIMEOUT_S from now (uvloop's clock is this one,
        # read once per loop turn: the 0.2 s below covers a turn that started a little before the check)
        wait_until(lambda: time.monotonic() > queued_at + TIMEOUT_S + 0.2, "the late item's deadline has passed")
        fresh = Call(url, modality, "fresh")  # queued behind it too, well within its own deadline
        wait_until(lambda: depth() == 3 or fresh.response is not None, "the fresh item is queued")
        assert fresh.response is None, f"answered before it was queued: {fresh.response.text[:200]}"
        backend.gate.set()
        for call in (held, late, fresh):
            call.join(120)

        assert held.response.status_code == 200, held.response.text
        assert late.response.status_code == 503, f"an expired item was computed: {late.response.text[:200]}"
        assert late.response.json()["error"]["type"] == "deadline_exceeded", late.response.text
        assert "CLIP_REQUEST_TIMEOUT_S" in late.response.json()["error"]["message"]
        assert late.response.headers["Retry-After"]
        assert fresh.response.status_code == 200, fresh.response.text
        assert backend.encoded == ["hold", "fresh"], f"the encoder computed {backend.encoded}"
        text = metrics(url)
        assert metric_value(text, "clip_rejected_total", reason="deadline") == 1
        assert metric_value(text, "clip_dropped_total", modality=modality) == 0
        assert metric_value(text, "clip_queue_depth", modality=modality) == 0
