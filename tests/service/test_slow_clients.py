"""Slow clients are cut off while normal clients are served: half-sent headers and connections that send
nothing (CLIP_HEADER_TIMEOUT_S), trickled bodies (CLIP_BODY_TIMEOUT_S), idle keep-alive connections
(CLIP_KEEPALIVE_TIMEOUT_S); and connections beyond CLIP_MAX_CONNECTIONS get 503 in the usual error shape."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from tests.service.raw_client import GIVE_UP_S, SlowClient
from tests.service.server import ServerProcess, metric_value

HEADER_S, BODY_S, KEEPALIVE_S, MAX_CONNECTIONS = 4.0, 4.0, 1.0, 12


@pytest.fixture(scope="module")
def guarded(bundled_dir, tmp_path_factory):
    proc = ServerProcess({"CLIP_MODEL": str(bundled_dir), "CLIP_HEADER_TIMEOUT_S": str(HEADER_S),
                          "CLIP_BODY_TIMEOUT_S": str(BODY_S), "CLIP_KEEPALIVE_TIMEOUT_S": str(KEEPALIVE_S),
                          "CLIP_MAX_CONNECTIONS": str(MAX_CONNECTIONS)},
                         tmp_path_factory.mktemp("guarded") / "server.log").wait_ready()
    yield proc
    proc.stop()


def response_json(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_slow_clients_are_cut_off_while_normal_clients_are_served(guarded):
    port = guarded.port
    half_headers = b"POST /embed/text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Slow: "
    body_head = (b"POST /embed/text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n")
    clients = {
        "silent": SlowClient(port),  # connects and sends nothing
        "half headers": SlowClient(port, half_headers),
        "trickled headers": SlowClient(port, b"GET /info HTTP/1.1\r\n", trickle=b"X-Slow: " + b"a" * 200),
        "trickled body": SlowClient(port, body_head + b'{"texts": ["', trickle=b"a" * 900),
        "idle keep-alive": SlowClient(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
    }
    for c in clients.values():
        c.start()
    served = []
    with httpx.Client(base_url=guarded.url, timeout=30) as normal:
        while not all(c.done.is_set() for c in clients.values()):
            assert time.monotonic() - clients["silent"].start_time < GIVE_UP_S + 5
            served.append(normal.post("/embed/text", json={"texts": [f"a red circle {len(served)}"]}).status_code)
            time.sleep(0.1)
    for c in clients.values():
        c.close()
    not_cut = [name for name, c in clients.items() if c.closed_after is None]
    assert not not_cut, f"never cut off: {not_cut}"
    assert len(served) >= 5 and set(served) == {200}, served
    print("cut off after (s):", {name: round(c.closed_after, 2) for name, c in clients.items()},
          f"while {len(served)} normal requests got 200")

    assert clients["silent"].received == b""  # nothing was asked, nothing is answered
    for name, timeout, setting in (("half headers", HEADER_S, "CLIP_HEADER_TIMEOUT_S"),
                                   ("trickled headers", HEADER_S, "CLIP_HEADER_TIMEOUT_S"),
                                   ("trickled body", BODY_S, "CLIP_BODY_TIMEOUT_S")):
        status, body = response_json(clients[name].received)
        assert status == 408 and body["error"]["type"] == "request_timeout", (name, clients[name].received)
        assert setting in body["error"]["message"], body
        assert clients[name].closed_after >= timeout * 0.9, (name, clients[name].closed_after)  # not before
    assert clients["idle keep-alive"].received.startswith(b"HTTP/1.1 200"), clients["idle keep-alive"].received
    assert clients["idle keep-alive"].closed_after < clients["silent"].closed_after  # keep-alive < header timeout

    text = guarded.metrics()
    assert metric_value(text, "clip_rejected_total", reason="header_timeout") >= 3
    assert metric_value(text, "clip_rejected_total", reason="body_timeout") >= 1
    assert metric_value(text, "clip_requests_total", endpoint="/embed/text", status="408") >= 1  # logged as 408


def test_connections_over_the_cap_get_503_and_liveness_still_passes(guarded):
    deadline = time.monotonic() + 30
    while True:  # start from no other open connection (the previous test's are closing)
        holders = [socket.create_connection(("127.0.0.1", guarded.port)) for _ in range(MAX_CONNECTIONS)]
        r = httpx.post(guarded.url + "/embed/text", json={"texts": ["a"]}, timeout=30)
        if r.status_code == 503 or time.monotonic() > deadline:
            break
        for s in holders:  # a connection of the previous test was still counted: try again
            s.close()
    try:
        assert r.status_code == 503, r.text
        assert r.json()["error"]["type"] == "overloaded" and "CLIP_MAX_CONNECTIONS" in r.json()["error"]["message"]
        assert r.headers["Retry-After"] and r.headers["connection"] == "close"
        openai = httpx.post(guarded.url + "/v1/embeddings", json={"model": "clip", "input": "a"}, timeout=30)
        assert openai.status_code == 503 and openai.json()["error"]["code"] == "overloaded", openai.text
        assert httpx.get(guarded.url + "/healthz", timeout=30).status_code == 200  # liveness is not refused
    finally:
        for s in holders:
            s.close()
    deadline = time.monotonic() + 30
    while httpx.post(guarded.url + "/embed/text", json={"texts": ["a"]}, timeout=30).status_code != 200:
        assert time.monotonic() < deadline, "still refused after the connections closed"
        time.sleep(0.1)
    text = guarded.metrics()
    assert metric_value(text, "clip_rejected_total", reason="too_many_connections") >= 1


def test_a_burst_of_uploads_over_the_cap_gets_readable_503s(guarded):
    """Each upload refused for the cap still reads its 503: the server takes the body before closing, as a close
    with unread data resets the connection and the client can lose the answer."""
    import asyncio
    import os

    blob = os.urandom(200_000)  # not an image: 400 when served, which is fine here; only the refusals matter
    n = MAX_CONNECTIONS * 5

    async def burst() -> list:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=n)) as client:
            async def one():
                try:
                    return (await client.post(guarded.url + "/embed/image", files=[("file", ("x.png", blob))]))
                except httpx.HTTPError as exc:
                    return exc

            return await asyncio.gather(*(one() for _ in range(n)))

    results = asyncio.run(burst())
    errors = [repr(r) for r in results if isinstance(r, Exception)]
    assert not errors, errors[:3]
    over = [r for r in results if r.status_code == 503]
    assert over and all("CLIP_MAX_CONNECTIONS" in r.json()["error"]["message"] for r in over), \
        sorted({(r.status_code, r.text[:80]) for r in results})
