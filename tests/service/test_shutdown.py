"""Graceful shutdown: SIGTERM under load. Work admitted before the signal completes with 200, new work gets 503,
/readyz turns 503, and the process exits 0. Also: SIGTERM while the model is still loading exits 0."""

from __future__ import annotations

import io
import signal
import threading
import time

import httpx
import numpy as np
from PIL import Image

from tests.service.server import ServerProcess, metric_value

REQUESTS, IMAGES_EACH = 16, 4


def gradient_png(side: int, seed: int) -> bytes:
    """A smooth image that takes tens of ms to decode, so admitted work is still queued at SIGTERM."""
    x = np.linspace(0, 255, side, dtype=np.float32)
    arr = np.stack([np.add.outer(x, x) / 2, np.outer(np.ones(side), x), np.full((side, side), seed * 10.0)], -1)
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def admitted_items(url: str) -> float:
    """Image items admitted so far: encoded ones plus those reserved, queued or in flight."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return metric_value(text, "clip_batch_size_sum", modality="image") + \
        metric_value(text, "clip_queue_depth", modality="image")


def test_sigterm_during_load_finishes_admitted_work_and_exits_0(bundled_dir, tmp_path):
    server = ServerProcess({"CLIP_MODEL": str(bundled_dir), "CLIP_IMAGE_MAX_BATCH": "2", "CLIP_IMAGE_MAX_WAIT_MS": "1",
                            "CLIP_PREPROCESS_WORKERS": "1", "CLIP_DRAIN_S": "60", "CLIP_REQUEST_TIMEOUT_S": "60"},
                           tmp_path / "server.log").wait_ready()
    try:
        images = [gradient_png(1200, i) for i in range(IMAGES_EACH)]
        base = admitted_items(server.url)
        results: list = [None] * REQUESTS

        def send(i: int) -> None:
            try:
                results[i] = httpx.post(server.url + "/embed/image", timeout=120,
                                        files=[("file", (f"{j}.png", b)) for j, b in enumerate(images)])
            except httpx.HTTPError as exc:
                results[i] = exc

        threads = [threading.Thread(target=send, args=(i,)) for i in range(REQUESTS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while admitted_items(server.url) - base < REQUESTS * IMAGES_EACH:  # every request is admitted ...
            assert time.monotonic() < deadline, "requests were not admitted"
            time.sleep(0.02)
        depth = metric_value(httpx.get(server.url + "/metrics").text, "clip_queue_depth", modality="image")
        assert depth > 0, "the test must signal while work is still queued"
        server.signal(signal.SIGTERM)  # ... before the signal
        time.sleep(0.2)
        late = httpx.post(server.url + "/embed/image", files=[("file", ("x.png", images[0]))], timeout=30)
        assert late.status_code == 503 and late.headers["Retry-After"], late.text
        ready = httpx.get(server.url + "/readyz", timeout=30)
        assert ready.status_code == 503 and "draining" in ready.json()["reason"]
        for t in threads:
            t.join(120)
        bad = [(i, r if isinstance(r, Exception) else (r.status_code, r.text[:200])) for i, r in enumerate(results)
               if isinstance(r, Exception) or r.status_code != 200]
        assert not bad, f"admitted before SIGTERM but not answered 200: {bad}\n{server.log()}"
        assert all(len(r.json()["embeddings"]) == IMAGES_EACH for r in results)
        assert server.proc.wait(60) == 0, server.log()
        assert "drain complete" in server.log()
    finally:
        server.stop()


def test_sigterm_while_loading_exits_0(bundled_dir, tmp_path):
    server = ServerProcess({"CLIP_MODEL": str(bundled_dir)}, tmp_path / "server.log")
    try:
        deadline = time.monotonic() + 60
        while True:  # wait for HTTP to be up, then signal before (or just as) the model is ready
            try:
                httpx.get(server.url + "/healthz", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and server.proc.poll() is None, server.log()
                time.sleep(0.05)
        server.signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0, server.log()
    finally:
        server.stop()
