"""README: `/readyz` is 503 while the model loads, 200 once it is loaded and warmed up; `/healthz` is 200 all along.

The model's loading is held back by a gate (tests/service/gated.py), so "while loading" is a state the test
controls, not a race against a fast load."""

from __future__ import annotations

import time

import httpx

from tests.service.gated import GatedServer
from tests.service.server import metric_value


def test_readyz_is_503_while_the_model_loads_then_200(bundled_dir, tmp_path):
    server = GatedServer({"CLIP_MODEL": str(bundled_dir)}, tmp_path, loaded=False)
    try:
        _wait_for_http(server)
        assert httpx.get(server.url + "/healthz", timeout=30).status_code == 200, "liveness never waits for the model"
        ready = httpx.get(server.url + "/readyz", timeout=30)
        assert ready.status_code == 503 and ready.json()["reason"] == "loading model", ready.text
        assert int(ready.headers["Retry-After"]) >= 1
        text = server.metrics()
        assert metric_value(text, "clip_ready") == 0
        assert metric_value(text, "clip_rejected_total", reason="not_ready") == 0

        work = httpx.post(server.url + "/embed/text", json={"texts": ["a red circle"]}, timeout=30)
        assert work.status_code == 503 and work.json()["error"]["type"] == "not_ready", work.text
        assert "loading model" in work.json()["error"]["message"] and int(work.headers["Retry-After"]) >= 1
        openai = httpx.post(server.url + "/v1/embeddings", json={"model": "clip", "input": "a red circle"}, timeout=30)
        assert openai.status_code == 503, openai.text
        assert openai.json()["error"]["type"] == "server_error" and openai.json()["error"]["code"] == "not_ready"
        assert metric_value(server.metrics(), "clip_rejected_total", reason="not_ready") == 2, "one per refusal"

        server.open_load()
        server.wait_ready(180)
        assert httpx.get(server.url + "/readyz", timeout=30).json() == {"status": "ready"}
        assert metric_value(server.metrics(), "clip_ready") == 1
        served = httpx.post(server.url + "/embed/text", json={"texts": ["a red circle"]}, timeout=30)
        assert served.status_code == 200 and len(served.json()["embeddings"]) == 1
        assert metric_value(server.metrics(), "clip_rejected_total", reason="not_ready") == 2
    finally:
        server.stop()


def _wait_for_http(server: GatedServer, timeout: float = 120.0) -> None:
    """Until the process answers HTTP at all (its model is still held back)."""
    until = time.monotonic() + timeout
    while True:
        try:
            httpx.get(server.url + "/healthz", timeout=2)
            return
        except httpx.HTTPError:
            assert time.monotonic() < until and server.proc.poll() is None, server.log()
            time.sleep(0.05)
