"""Graceful shutdown: SIGTERM under load. Work admitted before the signal completes with 200, new work gets 503,
/readyz turns 503, and the process exits 0. Also: SIGTERM while the model is still loading exits 0, and a drain
that runs out with work still queued exits 0 within CLIP_DRAIN_S + 10 s."""

from __future__ import annotations

import signal
import threading
import time

import httpx

from tests.service.conftest import encode, shape_image
from tests.service.gated import GatedServer
from tests.service.server import metric_value

REQUESTS, IMAGES_EACH = 16, 4
DRAIN_S = 2.0
EXIT_MARGIN_S = 10.0  # README: exits "within CLIP_DRAIN_S + 10 s in any case"


def test_sigterm_during_load_finishes_admitted_work_and_exits_0(bundled_dir, tmp_path):
    """The encoder is held (tests/service/gated.py) until after the signal, so every admitted item is surely
    still queued or in flight when SIGTERM comes; released, all of it must be answered before the exit."""
    server = GatedServer({"CLIP_MODEL": str(bundled_dir), "CLIP_IMAGE_MAX_BATCH": "2", "CLIP_IMAGE_MAX_WAIT_MS": "1",
                          "CLIP_DRAIN_S": "60", "CLIP_REQUEST_TIMEOUT_S": "60"}, tmp_path).wait_ready()
    try:
        images = [encode(shape_image(c, "circle")) for c in ("red", "blue", "green", "yellow")[:IMAGES_EACH]]
        results: list = [None] * REQUESTS

        def send(i: int) -> None:
            try:
                results[i] = httpx.post(server.url + "/embed/image", timeout=120,
                                        files=[("file", (f"{j}.png", b)) for j, b in enumerate(images)])
            except httpx.HTTPError as exc:
                results[i] = exc

        server.hold()
        threads = [threading.Thread(target=send, args=(i,)) for i in range(REQUESTS)]
        for t in threads:
            t.start()
        _wait_until(lambda: metric_value(server.metrics(), "clip_queue_depth", modality="image")
                    == REQUESTS * IMAGES_EACH, "every request admitted")  # ... none can finish while held
        server.signal(signal.SIGTERM)
        ready = _wait_not_ready(server)  # the signal is handled: from here on, new work is refused
        assert "draining" in ready.json()["reason"], ready.text
        late = httpx.post(server.url + "/embed/image", files=[("file", ("x.png", images[0]))], timeout=30)
        assert late.status_code == 503 and late.headers["Retry-After"], late.text
        assert late.json()["error"]["type"] == "not_ready"
        assert metric_value(server.metrics(), "clip_rejected_total", reason="draining") == 1, "the late one, counted"
        server.release()
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


def _wait_not_ready(server: GatedServer, timeout: float = 30.0) -> httpx.Response:
    """Poll /readyz until it answers 503 (a signal is handled asynchronously), and return that answer."""
    deadline = time.monotonic() + timeout
    while (ready := httpx.get(server.url + "/readyz", timeout=30)).status_code == 200:
        assert time.monotonic() < deadline, "/readyz never turned 503"
        time.sleep(0.02)
    return ready


def test_sigterm_while_loading_exits_0(bundled_dir, tmp_path):
    """The model's load is held back (tests/service/gated.py), so the signal surely comes while it loads."""
    server = GatedServer({"CLIP_MODEL": str(bundled_dir)}, tmp_path, loaded=False)
    try:
        ready = _wait_not_ready(_wait_for_http(server))
        assert ready.json()["reason"] == "loading model", ready.text
        server.signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0, server.log()
    finally:
        server.stop()


def test_a_drain_that_runs_out_still_exits_0_in_time(bundled_dir, tmp_path):
    """CLIP_DRAIN_S runs out with work still queued (the encoder is held, so it cannot finish): the process exits
    anyway, with 0, within CLIP_DRAIN_S + 10 s, and the waiting clients see their connections end, never a 500."""
    server = GatedServer({"CLIP_MODEL": str(bundled_dir), "CLIP_DRAIN_S": str(DRAIN_S), "CLIP_TEXT_MAX_BATCH": "1",
                          "CLIP_REQUEST_TIMEOUT_S": "600"}, tmp_path).wait_ready()
    try:
        warm = server.entered()
        server.hold()
        results: list = [None] * 3

        def send(i: int) -> None:
            try:  # texts of their own: no cache hit can answer them
                results[i] = httpx.post(server.url + "/embed/text", json={"texts": [f"drain test {i}"]}, timeout=120)
            except httpx.HTTPError as exc:
                results[i] = exc

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(results))]
        for t in threads:
            t.start()
        server.wait_entered(warm + 1)  # one is inside the (held) encoder ...
        _wait_until(lambda: metric_value(server.metrics(), "clip_queue_depth", modality="text") == len(results),
                    "every request admitted")  # ... and the others queued behind it
        start = time.monotonic()
        server.signal(signal.SIGTERM)
        code = server.proc.wait(DRAIN_S + EXIT_MARGIN_S + 30)
        exit_s = time.monotonic() - start
        for t in threads:
            t.join(30)
        print(f"exit {exit_s:.2f} s after SIGTERM with CLIP_DRAIN_S={DRAIN_S:g} and work still queued")
        assert code == 0, server.log()
        assert "drain timed out" in server.log(), server.log()
        assert DRAIN_S <= exit_s < DRAIN_S + EXIT_MARGIN_S, f"exited {exit_s:.1f} s after SIGTERM"
        answered = [r.status_code for r in results if not isinstance(r, Exception)]
        assert not answered, f"held work cannot have been answered, and never with a 500: {answered}"
    finally:
        server.stop()


def _wait_for_http(server: GatedServer, timeout: float = 120.0) -> GatedServer:
    """Until the process answers HTTP at all (its model may still be loading)."""
    _wait_until(lambda: _answers(server), "the server to answer HTTP", timeout)
    return server


def _answers(server: GatedServer) -> bool:
    assert server.proc.poll() is None, server.log()
    try:
        httpx.get(server.url + "/healthz", timeout=2)
        return True
    except httpx.HTTPError:
        return False


def _wait_until(check, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
