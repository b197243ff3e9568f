"""The URL fetcher's address checks, with a patched resolver and a recording network backend: every address of a
DNS answer must be public (a mixed answer is refused before any connection), and the TCP connection goes to the
address that was checked, never to the host name (which a rebinding DNS could answer differently the second time).
No real DNS and no outside network: the resolver is the event loop's getaddrinfo, replaced per test."""

from __future__ import annotations

import asyncio

import pytest

from service.errors import UrlFetchFailed, UrlRefused
from service.urls import UrlFetcher
from tests.service.conftest import encode, shape_image
from tests.service.fake_dns import PUBLIC, PUBLIC_2, RecordingNetwork, Resolver, answer
from tests.service.https_server import ImageHost

PNG = encode(shape_image("red", "circle"))


def run_fetch(f: UrlFetcher, url: str, resolver: Resolver, inner: RecordingNetwork) -> bytes:
    """f.fetch(url) with the loop's resolver and the checked network's inner backend replaced."""
    f.network.inner = inner

    async def go() -> bytes:
        asyncio.get_running_loop().getaddrinfo = resolver  # type: ignore[method-assign]
        return await f.fetch(url)

    return asyncio.run(go())


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = ImageHost(tmp_path_factory.mktemp("tls"), {"/red.png": (200, {"Content-Type": "image/png"}, PNG)})
    yield h
    h.close()


def fetcher(host: ImageHost, **kw) -> UrlFetcher:
    """No loopback switch: only the patched resolver's public answers make `localhost` fetchable."""
    return UrlFetcher(["localhost", "img.example.com"], **{"timeout_s": 10.0, "ca_bundle": str(host.ca), **kw})


@pytest.mark.parametrize("addresses", [
    (PUBLIC, "10.0.0.1"),
    (PUBLIC, PUBLIC_2, "192.168.1.7"),
    (PUBLIC, "127.0.0.1"),
    (PUBLIC, "169.254.169.254"),
    ("2606:4700:4700::1111", "::ffff:10.0.0.1"),
    (PUBLIC, "fd00:ec2::254"),
    ("10.0.0.1", PUBLIC),
], ids=lambda a: "+".join(a))
def test_a_mixed_answer_is_refused_before_any_connection(host, addresses):
    """Any non-public address in the answer refuses the host, wherever it sits in the list."""
    resolver, inner = Resolver(answer(*addresses)), RecordingNetwork()
    with pytest.raises(UrlRefused, match="does not resolve to a public address") as refused:
        run_fetch(fetcher(host), "https://img.example.com/cat.jpg", resolver, inner)
    assert resolver.lookups == ["img.example.com"]
    assert inner.connects == [], f"connected to {inner.connects} although {addresses} holds a private address"
    for a in addresses:  # what DNS answered stays in the server's log
        assert a not in str(refused.value)


def test_the_connection_goes_to_the_checked_address(host):
    """A rebinding DNS: `localhost` is public on the first lookup and loopback on any later one. The fetch must
    connect to the address it checked (the recording backend routes that to the local HTTPS host), never hand the
    name to a second lookup that would get the loopback answer."""
    resolver = Resolver(answer(PUBLIC), answer("127.0.0.1"))
    inner = RecordingNetwork(lambda asked: "127.0.0.1" if asked == PUBLIC else None)
    assert run_fetch(fetcher(host), host.url("/red.png"), resolver, inner) == PNG  # TLS checked "localhost"
    assert inner.connects == [PUBLIC], f"connected to {inner.connects}, not to the checked address {PUBLIC}"
    assert resolver.lookups == ["localhost"]


def test_the_next_checked_address_is_tried_when_one_is_unreachable(host):
    resolver = Resolver(answer(PUBLIC, PUBLIC_2))
    inner = RecordingNetwork(lambda asked: "127.0.0.1" if asked == PUBLIC_2 else None)
    assert run_fetch(fetcher(host), host.url("/red.png"), resolver, inner) == PNG
    assert inner.connects == [PUBLIC, PUBLIC_2], inner.connects


def test_unreachable_everywhere_is_a_fetch_failure_naming_no_address(host):
    resolver, inner = Resolver(answer(PUBLIC, PUBLIC_2)), RecordingNetwork()
    with pytest.raises(UrlFetchFailed) as failed:
        run_fetch(fetcher(host), "https://img.example.com/cat.jpg", resolver, inner)
    assert failed.value.message == "could not fetch: ConnectError"  # the error's kind, never its text
    assert inner.connects == [PUBLIC, PUBLIC_2]
    assert PUBLIC not in str(failed.value) and PUBLIC_2 not in str(failed.value)
