"""Image URL refusals keep DNS answers to the server's log, and the wait for a fetch slot is under the fetch
deadline (16 slow hosts cannot park every later request)."""

from __future__ import annotations

import asyncio
import base64
import threading
import time

import httpx
import pytest

from service.errors import Overloaded
from service.urls import MAX_CONCURRENT_FETCHES, UrlFetcher
from tests.service.conftest import encode, shape_image
from tests.service.https_server import ImageHost
from tests.service.server import ServerProcess

PNG = encode(shape_image("red", "circle"))


class Gate:
    """A route that holds each request until released, counting arrivals: fetches that sit on a slot."""

    def __init__(self):
        self.arrived = 0
        self.lock = threading.Lock()
        self.release = threading.Event()

    def __call__(self, handler) -> None:
        with self.lock:
            self.arrived += 1
        self.release.wait(30)
        try:
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(PNG)))
            handler.end_headers()
            handler.wfile.write(PNG)
        except OSError:
            pass


@pytest.fixture(scope="module")
def gate():
    return Gate()


@pytest.fixture(scope="module")
def host(tmp_path_factory, gate):
    h = ImageHost(tmp_path_factory.mktemp("tls"), {"/red.png": (200, {"Content-Type": "image/png"}, PNG),
                                                    "/held.png": gate})
    yield h
    gate.release.set()
    h.close()


def test_waiting_for_a_fetch_slot_counts_against_the_deadline(host, gate):
    f = UrlFetcher(["localhost"], timeout_s=20.0, ca_bundle=str(host.ca), allow_loopback_for_tests=True)

    async def scenario() -> tuple[BaseException | bytes, float]:
        holders = [asyncio.ensure_future(f.fetch(host.url("/held.png"))) for _ in range(MAX_CONCURRENT_FETCHES)]
        while gate.arrived < MAX_CONCURRENT_FETCHES:  # every slot is taken by a fetch the host holds
            await asyncio.sleep(0.01)
        f.timeout_s = 0.5  # the next fetch's deadline (the holders keep their 20 s)
        start = time.monotonic()
        try:
            result: BaseException | bytes = await f.fetch(host.url("/red.png"))
        except Overloaded as exc:
            result = exc
        waited = time.monotonic() - start
        gate.release.set()
        await asyncio.gather(*holders, return_exceptions=True)
        return result, waited

    result, waited = asyncio.run(scenario())
    assert isinstance(result, Overloaded), f"got {result!r:.80} after {waited:.1f}s: the slot wait had no deadline"
    assert result.message == (f"all {MAX_CONCURRENT_FETCHES} URL fetch slots stayed busy for 0.5 s "
                              f"(CLIP_URL_TIMEOUT_S); retry later") and result.retry_after == 1
    assert waited < 10, waited  # its own deadline (0.5 s), not the holders' (20 s)


@pytest.fixture(scope="module")
def strict_server(bundled_dir, host, tmp_path_factory):
    """URLs on, localhost allowed by name, but no loopback switch: localhost resolves to a refused address."""
    proc = ServerProcess({"CLIP_MODEL": str(bundled_dir), "CLIP_ALLOW_URLS": "true",
                          "CLIP_URL_ALLOWED_HOSTS": "localhost", "CLIP_URL_CA_BUNDLE": str(host.ca)},
                         tmp_path_factory.mktemp("strict") / "server.log").wait_ready()
    yield proc
    proc.stop()


@pytest.mark.parametrize("route", ["/embed/image", "/v1/embeddings"])
def test_refusal_names_no_resolved_address_but_the_log_does(strict_server, host, route):
    url = host.url("/red.png")
    body = ({"images": [base64.b64encode(PNG).decode(), url]} if route == "/embed/image"
            else {"model": "clip", "input": [url]})
    r = httpx.post(strict_server.url + route, json=body, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert "url_refused" in (error["type"], error.get("code")), error
    assert "does not resolve to a public address" in error["message"], error
    for leak in ("127.0.0.1", "::1", "loopback"):
        assert leak not in r.text, r.text
    log = strict_server.log()
    assert "127.0.0.1" in log or "::1" in log, log
