"""What URL fetching may cost the server: all downloads of one request together stay within CLIP_MAX_BODY_BYTES
(what its body could have held), and at most 16 fetches run at once per server, however many are asked for."""

from __future__ import annotations

import asyncio
import io
from types import SimpleNamespace

import httpcore
import numpy as np
import pytest
from PIL import Image

from service.errors import PayloadTooLarge, UrlFetchFailed
from service.bodies import images_from_strings
from service.urls import UrlFetcher
from tests.service.fake_dns import PUBLIC, Resolver, answer
from tests.service.https_server import ImageHost

PER_URL_MAX = 100_000  # CLIP_URL_MAX_BYTES
REQUEST_MAX = 100_000  # CLIP_MAX_BODY_BYTES: the budget of all of one request's downloads together


def noise_png(side: int, seed: int) -> bytes:
    """Random pixels: PNG cannot compress them, so the file is about side x side x 3 bytes."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


BIG_A, BIG_B, SMALL = noise_png(140, 0), noise_png(140, 1), noise_png(40, 2)  # ~59 KB, ~59 KB, ~5 KB


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = ImageHost(tmp_path_factory.mktemp("tls"), {f"/{name}.png": (200, {"Content-Type": "image/png"}, data)
                                                    for name, data in (("a", BIG_A), ("b", BIG_B), ("s", SMALL))})
    yield h
    h.close()


def request_for(host: ImageHost) -> SimpleNamespace:
    """What images_from_strings reads of a request: the server's fetcher and settings."""
    fetcher = UrlFetcher(["localhost"], timeout_s=10.0, max_bytes=PER_URL_MAX, ca_bundle=str(host.ca),
                         allow_loopback_for_tests=True)
    state = SimpleNamespace(url_fetcher=fetcher, settings=SimpleNamespace(max_body_bytes=REQUEST_MAX))
    return SimpleNamespace(app=SimpleNamespace(state=state))


def test_the_sizes_make_the_point():
    assert len(BIG_A) < PER_URL_MAX and len(BIG_B) < PER_URL_MAX  # each alone is allowed ...
    assert len(BIG_A) + len(BIG_B) > REQUEST_MAX  # ... the two together are not
    assert len(BIG_A) + 4 * len(SMALL) < REQUEST_MAX


def test_a_requests_downloads_together_stay_within_the_body_cap(host):
    with pytest.raises(PayloadTooLarge, match=r"images\[\d\]: the request's images together exceed "
                                              r"CLIP_MAX_BODY_BYTES"):
        asyncio.run(images_from_strings(request_for(host), [host.url("/a.png"), host.url("/b.png")]))


def test_downloads_within_the_budget_are_all_fetched(host):
    """The budget is the request's, not one URL's: a big image and small ones together fit, and so does each big
    image in a request of its own (the budget is not shared between requests)."""
    req = request_for(host)
    urls = [host.url("/a.png")] + [host.url("/s.png")] * 4
    assert asyncio.run(images_from_strings(req, urls)) == [BIG_A] + [SMALL] * 4
    assert asyncio.run(images_from_strings(req, [host.url("/a.png")])) == [BIG_A]
    assert asyncio.run(images_from_strings(req, [host.url("/b.png")])) == [BIG_B]


# --- the concurrent-fetch cap -------------------------------------------------------------------------------------
CAP = 16  # the README's "16 fetch slots" per server
ASKED = 40


class HeldNetwork(httpcore.AsyncNetworkBackend):
    """Connections that hang until released, counting how many are open at once. Everything runs on the test's
    event loop (no threads, no sockets), so the counts are exact."""

    def __init__(self):
        self.release = asyncio.Event()
        self.entered = self.open = self.most_open = 0

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        self.entered += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await self.release.wait()
        finally:
            self.open -= 1
        raise httpcore.ConnectError("released")

    async def connect_unix_socket(self, *args, **kwargs):
        raise AssertionError("never a unix socket")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def spin(turns: int) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


def test_at_most_16_fetches_run_at_once():
    fetcher = UrlFetcher(["img.example.com"], timeout_s=60.0)

    async def scenario() -> tuple[int, int, int, list]:
        asyncio.get_running_loop().getaddrinfo = Resolver(answer(PUBLIC))  # type: ignore[method-assign]
        net = fetcher.network.inner = HeldNetwork()
        tasks = [asyncio.ensure_future(fetcher.fetch(f"https://img.example.com/{i}.jpg")) for i in range(ASKED)]
        for _ in range(10_000):  # until the slots are taken (a few loop turns each)
            if net.entered >= CAP:
                break
            await asyncio.sleep(0)
        await spin(500)  # ample turns for any fetch that could start to reach its connection
        held = net.entered
        net.release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return held, net.most_open, net.entered, results

    held, most_open, entered, results = asyncio.run(scenario())
    assert held == CAP, f"{held} connections opened at once, the cap is {CAP}"
    assert most_open == CAP and entered == ASKED  # the others waited for a slot, then had their turn
    assert all(isinstance(r, UrlFetchFailed) for r in results), {type(r).__name__ for r in results}
