"""Client failover (service/client.py): several base URLs, a dead or overloaded server skipped until it recovers,
and one fingerprint across servers. Real servers for the behaviour; a fake transport for the policy's details."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest

from service.client import AsyncClient, Client, FingerprintMismatch
from tests.service.conftest import encode, shape_image
from tests.service.server import ServerProcess, metric_value

TEXTS = ["a red circle", "a blue square"]


def served(server, path: str = "/embed/image") -> float:
    return metric_value(httpx.get(server.url + "/metrics", timeout=30).text, "clip_requests_total",
                        endpoint=path, status="200")


# --- real servers -------------------------------------------------------------------------------------------
@pytest.mark.slow  # 14-22 s: it restarts a server
def test_a_server_killed_mid_run_costs_no_request_and_is_used_again_once_restarted(server, bundled_dir, tmp_path):
    """Four concurrent loops embed images through two servers; one is SIGKILLed mid-run (requests in flight on it
    die with it): every call still answers, with the right vectors. Restarted on its port, it gets calls again."""
    images = [encode(shape_image(c, s)) for c, s in (("red", "circle"), ("blue", "square"), ("green", "star"))]
    expected = Client(server.url).embed_images(images).vectors
    doomed = ServerProcess({"CLIP_MODEL": str(bundled_dir)}, tmp_path / "doomed.log").wait_ready()
    port = doomed.port
    answers: list[np.ndarray] = []

    async def run(restarted: list[ServerProcess]) -> None:
        async with AsyncClient([doomed.url, server.url], cooldown=0.2, max_cooldown=1.0) as clip:
            async def loop() -> None:
                for _ in range(15):
                    answers.append((await clip.embed_images(images)).vectors)
                    if len(answers) == 12:
                        doomed.proc.kill()  # no drain: connections reset, in-flight requests lost
                        doomed.proc.wait(30)

            await asyncio.gather(*(loop() for _ in range(4)))
            assert clip.endpoints.all[0].failures > 0, "the dead server was noticed"
            # the same client, once a server is back on the dead one's port (blocking here: nothing else runs)
            restarted.append(ServerProcess({"CLIP_MODEL": str(bundled_dir)}, tmp_path / "restarted.log", port=port))
            restarted[0].wait_ready()
            deadline = time.monotonic() + 60
            while served(restarted[0]) == 0:
                assert time.monotonic() < deadline, "the restarted server never got a call again"
                assert np.allclose((await clip.embed_images(images)).vectors, expected, atol=1e-5)
            answers.append((await clip.embed_images(images)).vectors)

    restarted: list[ServerProcess] = []
    try:
        before = served(server)
        asyncio.run(run(restarted))
        assert len(answers) == 60 + 1 and all(np.allclose(a, expected, atol=1e-5) for a in answers)
        assert served(server) > before, "the live server took over"
    finally:
        doomed.stop()
        for proc in restarted:
            proc.stop()


def test_a_draining_server_answers_503_and_the_other_takes_the_calls(server, bundled_dir, tmp_path):
    """SIGTERM: the server answers 503 while it drains, then refuses connections; no call fails meanwhile."""
    draining = ServerProcess({"CLIP_MODEL": str(bundled_dir), "CLIP_DRAIN_S": "5"}, tmp_path / "d.log").wait_ready()
    try:
        with Client([draining.url, server.url], cooldown=0.2, max_cooldown=1.0) as clip:
            assert clip.embed_texts(TEXTS).vectors.shape == (2, 128)
            draining.signal()
            deadline = time.monotonic() + 60
            while draining.proc.poll() is None and time.monotonic() < deadline:
                assert clip.embed_texts(TEXTS).vectors.shape == (2, 128)
            assert draining.proc.poll() == 0, "the drained server exited"
            for _ in range(5):
                assert clip.embed_texts(TEXTS).vectors.shape == (2, 128)
    finally:
        draining.stop()


def test_servers_with_different_fingerprints_raise(server, other_server):
    with Client([server.url, other_server.url]) as clip:
        with pytest.raises(FingerprintMismatch) as err:
            for _ in range(2):  # round robin: the second call goes to the other server
                clip.embed_texts(TEXTS)
    fingerprints = {Client(server.url).info().fingerprint, Client(other_server.url).info().fingerprint}
    assert len(fingerprints) == 2 and {err.value.expected, err.value.got} == fingerprints
    assert "not comparable" in str(err.value) and err.value.url in (server.url, other_server.url)


def test_async_client_raises_on_different_fingerprints_too(server, other_server):
    async def run() -> None:
        async with AsyncClient([other_server.url, server.url]) as clip:
            await asyncio.gather(*(clip.embed_texts(TEXTS) for _ in range(4)))

    with pytest.raises(FingerprintMismatch):
        asyncio.run(run())


def test_one_url_keeps_its_old_behaviour_unless_a_fingerprint_is_given(server, other_server):
    with Client(other_server.url) as clip:  # unchecked, as before failover existed
        assert clip.embed_texts(TEXTS).fingerprint != Client(server.url).info().fingerprint
    with Client(other_server.url, fingerprint=Client(server.url).info().fingerprint) as clip:
        with pytest.raises(FingerprintMismatch):
            clip.embed_texts(TEXTS)


# --- the policy, against a fake transport -------------------------------------------------------------------
BODY = {"model": "m", "fingerprint": "f", "dimensions": 1, "embeddings": [[1.0]]}


class Fake:
    """Answers per host: "ok", "503", "refuse" (connect error), or "other" (another fingerprint)."""

    def __init__(self, **state: str):
        self.state, self.seen = state, []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.seen.append((host, request.url.path))
        mode = self.state[host]
        if mode == "refuse":
            raise httpx.ConnectError("connection refused", request=request)
        if mode == "503":
            return httpx.Response(503, headers={"Retry-After": "7"}, json={"error": {"type": "x", "message": "y"}})
        if request.url.path == "/readyz":
            return httpx.Response(200, json={"status": "ready"})
        return httpx.Response(200, json={**BODY, "fingerprint": "g" if mode == "other" else "f"})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fake_client(fake: Fake, **kw) -> tuple[Client, Clock]:
    client = Client(["http://a", "http://b"], transport=httpx.MockTransport(fake), **kw)
    clock = Clock()
    client.endpoints.clock = clock
    client.sleep = lambda s: pytest.fail(f"slept {s}s although another server was up")
    return client, clock


def test_a_503_sends_the_call_to_the_other_server_at_once_and_cools_the_first_down():
    fake = Fake(a="503", b="ok")
    client, clock = fake_client(fake)
    for _ in range(4):
        client.embed_texts("x")
    assert fake.seen.count(("a", "/embed/text")) == 1, "skipped while cooling down (Retry-After: 7 s)"
    fake.state["a"] = "ok"
    clock.now += 8  # the cool-down is over: a /readyz probe, then calls again
    for _ in range(4):
        client.embed_texts("x")
    assert ("a", "/readyz") in fake.seen and fake.seen.count(("a", "/embed/text")) >= 2


def test_refused_connections_cool_down_longer_each_time_and_all_down_raises():
    fake = Fake(a="refuse", b="ok")
    client, clock = fake_client(fake, cooldown=1.0, max_cooldown=4.0)
    client.embed_texts("x")
    a = client.endpoints.all[0]
    assert a.failures == 1 and a.down_until == clock.now + 1.0
    clock.now += 1.5
    for _ in range(2):  # round robin: one of them probes a, which refuses again: a longer cool-down
        client.embed_texts("x")
    assert a.failures == 2 and a.down_until == clock.now + 2.0
    fake.state["b"] = "refuse"
    with pytest.raises(httpx.ConnectError):
        client.embed_texts("x")


def test_when_every_server_is_busy_the_client_waits_as_one_server_would():
    fake = Fake(a="503", b="503")
    client = Client(["http://a", "http://b"], transport=httpx.MockTransport(fake), max_retries=2)
    slept: list[float] = []
    client.sleep = slept.append
    with pytest.raises(Exception) as err:
        client.embed_texts("x")
    assert getattr(err.value, "status", None) == 503 and slept == [7.0, 7.0]


def test_the_first_answer_pins_the_fingerprint():
    fake = Fake(a="ok", b="other")
    client, _ = fake_client(fake)
    with pytest.raises(FingerprintMismatch) as err:
        for _ in range(2):
            client.embed_texts("x")
    assert (err.value.expected, err.value.got, err.value.url) == ("f", "g", "http://b")
