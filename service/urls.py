"""Fetching images by https URL, for servers that opt in (CLIP_ALLOW_URLS + CLIP_URL_ALLOWED_HOSTS).

Every hop, the URL and each redirect, is checked the same way: https only, no credentials, host on the
allow-list. The host is then resolved by us and every address it resolves to must be public: private,
loopback, link-local, shared (CGNAT), reserved, multicast and cloud-metadata addresses are refused, also
when given as IP literals or hidden in IPv4-mapped / 6to4 / Teredo IPv6 addresses. The TCP connection goes to
exactly the address that was checked (the resolution happens inside the connect call), so a DNS answer that
changes between check and connect (DNS rebinding) cannot point it elsewhere; TLS still verifies the host name.
One deadline covers the whole fetch, redirects and body included (CLIP_URL_TIMEOUT_S), so a slow-drip body
is cut off; the body is counted while it streams (CLIP_URL_MAX_BYTES, and the request's total budget).
No proxy from the environment is used. Local paths and file: URLs never get here (service/bodies.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from typing import Iterable, Optional, Sequence

import certifi
import httpcore
import httpx

from service.errors import Overloaded, PayloadTooLarge, UrlFetchFailed, UrlRefused

log = logging.getLogger("service.urls")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Cloud instance-metadata endpoints. Most are link-local or private anyway; listed so that no future change to
# the rules below (e.g. the loopback test switch) can ever let them through.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "168.63.129.16"))
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 3
MAX_CONCURRENT_FETCHES = 16  # per server: URL fetching must not turn the server into a download amplifier


def embedded_ipv4(ip: IPAddress) -> Optional[ipaddress.IPv4Address]:
    """The IPv4 address an IPv6 address carries (IPv4-mapped, 6to4, Teredo client), if any."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            return ip.ipv4_mapped
        if ip.sixtofour:
            return ip.sixtofour
        if ip.teredo:
            return ip.teredo[1]
    return None


def address_problem(ip: IPAddress, allow_loopback: bool = False) -> Optional[str]:
    """Why `ip` must not be contacted, or None when it is a public unicast address."""
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    inner = embedded_ipv4(ip)
    if inner is not None:
        problem = address_problem(inner, allow_loopback)
        return f"an IPv6 address wrapping {inner} ({problem})" if problem else None
    if allow_loopback and any(ip in net for net in LOOPBACK):
        return None
    for attribute, what in (("is_loopback", "a loopback address"), ("is_link_local", "a link-local address"),
                            ("is_multicast", "a multicast address"), ("is_unspecified", "an unspecified address"),
                            ("is_reserved", "a reserved address"), ("is_private", "a private address")):
        if getattr(ip, attribute):
            return what
    if not ip.is_global:  # shared (100.64.0.0/10), documentation, benchmarking, ...
        return "a non-public address"
    return None


def host_allowed(host: str, allowed: Sequence[str]) -> bool:
    """`host` matches an entry: exact name, '*.example.com' (any subdomain), or '*' (any host)."""
    host = host.lower().rstrip(".")
    for entry in allowed:
        entry = entry.strip().lower().rstrip(".")
        if entry == "*" or entry == host:
            return True
        if entry.startswith("*.") and host.endswith(entry[1:]) and len(host) > len(entry) - 1:
            return True
    return False


class ByteBudget:
    """Bytes that all downloads of one request may still use together."""

    def __init__(self, total: int):
        self.left = total

    def take(self, n: int) -> bool:
        self.left -= n
        return self.left >= 0


class _CheckedNetwork(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, except that connect_tcp resolves the host itself, refuses unless every
    address is public, and connects to an address it checked (no second DNS lookup to race against)."""

    def __init__(self, allow_loopback: bool):
        self.inner = httpcore.AnyIOBackend()
        self.allow_loopback = allow_loopback

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        # What DNS answered goes to our log only. The caller learns just that the host has no usable public
        # address, the same words whether it does not resolve or resolves inside: otherwise, with
        # CLIP_URL_ALLOWED_HOSTS='*', anyone could map internal names to internal addresses through us.
        refused = UrlRefused(f"host {host!r} does not resolve to a public address; only public addresses are "
                             f"fetched")
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            log.info("image URL refused: host %r does not resolve: %s", host, exc)
            raise refused from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
        if not addresses:
            log.info("image URL refused: host %r has no address", host)
            raise refused
        for ip in addresses:  # all of them: a mixed answer must not slip a private address through
            problem = address_problem(ip, self.allow_loopback)
            if problem:
                log.warning("image URL refused: host %r resolves to %s, %s", host, ip, problem)
                raise refused
        return addresses

    async def connect_tcp(self, host: str, port: int, timeout: Optional[float] = None,
                          local_address: Optional[str] = None,
                          socket_options: Optional[Iterable] = None) -> httpcore.AsyncNetworkStream:
        error: Optional[Exception] = None
        for ip in await self.resolve(host, port):
            try:
                return await self.inner.connect_tcp(str(ip), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error  # type: ignore[misc]

    async def connect_unix_socket(self, *args, **kwargs) -> httpcore.AsyncNetworkStream:
        raise UrlRefused("unix sockets are never fetched")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class UrlFetcher:
    """Downloads images from allowed https hosts; one instance per server (see module docstring)."""

    def __init__(self, allowed_hosts: Sequence[str], *, timeout_s: float = 5.0, max_bytes: int = 20 * 1024 * 1024,
                 ca_bundle: Optional[str] = None, allow_loopback_for_tests: bool = False):
        if not allowed_hosts:
            raise ValueError("URL fetching needs an allow-list of hosts (CLIP_URL_ALLOWED_HOSTS)")
        self.allowed_hosts, self.timeout_s, self.max_bytes = list(allowed_hosts), timeout_s, max_bytes
        self.ssl_context = ssl.create_default_context(cafile=ca_bundle or certifi.where())
        self.network = _CheckedNetwork(allow_loopback_for_tests)
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_FETCHES)
        if allow_loopback_for_tests:
            log.warning("CLIP_URL_ALLOW_LOOPBACK_FOR_TESTS is on: image URLs may reach this machine's loopback "
                        "services. Never use this outside tests.")

    @classmethod
    def from_settings(cls, settings) -> Optional["UrlFetcher"]:
        """The server's fetcher, or None when URLs are off (the default)."""
        if not settings.allow_urls:
            return None
        return cls(settings.url_allowed_hosts, timeout_s=settings.url_timeout_s, max_bytes=settings.url_max_bytes,
                   ca_bundle=settings.url_ca_bundle, allow_loopback_for_tests=settings.url_allow_loopback_for_tests)

    def check_url(self, raw: str) -> httpx.URL:
        """Parse and vet one hop's URL (scheme, credentials, host allow-list); addresses are checked at connect."""
        try:
            url = httpx.URL(raw)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise UrlRefused(f"not a valid URL: {exc}")
        if url.scheme != "https":
            raise UrlRefused(f"only https URLs are fetched, not {url.scheme or 'scheme-less'}:")
        if url.userinfo:
            raise UrlRefused("URLs with credentials (user:password@) are not fetched")
        host = url.raw_host.decode("ascii", "replace")
        if not host:
            raise UrlRefused("URL has no host")
        if not host_allowed(host, self.allowed_hosts):
            raise UrlRefused(f"host {host!r} is not in CLIP_URL_ALLOWED_HOSTS")
        try:  # an IP literal is checked here already, for a clear message before any connection attempt
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return url
        problem = address_problem(ip, self.network.allow_loopback)
        if problem:
            raise UrlRefused(f"{ip} is {problem}; only public addresses are fetched")
        return url

    async def fetch(self, raw_url: str, budget: Optional[ByteBudget] = None) -> bytes:
        """The body of `raw_url` after at most MAX_REDIRECTS checked redirects, within timeout and size caps.
        The deadline covers the wait for a fetch slot too: 16 slow hosts must not park every later request."""
        got_slot = False

        async def in_a_slot() -> bytes:
            nonlocal got_slot
            async with self._slots:
                got_slot = True
                return await self._fetch(raw_url, budget)

        try:
            return await asyncio.wait_for(in_a_slot(), self.timeout_s)
        except asyncio.TimeoutError:
            if not got_slot:  # our congestion, not the URL's fault: retryable, like a full queue
                raise Overloaded(f"all {MAX_CONCURRENT_FETCHES} URL fetch slots stayed busy for "
                                 f"{self.timeout_s:g} s (CLIP_URL_TIMEOUT_S); retry later", retry_after=1)
            raise UrlFetchFailed(f"no complete answer within {self.timeout_s:g} s (CLIP_URL_TIMEOUT_S)")
        except (httpcore.TimeoutException,) as exc:
            raise UrlFetchFailed(f"timed out: {type(exc).__name__}")
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol, ssl.SSLError,
                OSError) as exc:
            # the text of a connection error names the address it tried: the log gets it, the caller does not
            log.info("image URL fetch failed: %s: %s", type(exc).__name__, exc)
            raise UrlFetchFailed(f"could not fetch: {type(exc).__name__}")

    async def _fetch(self, raw_url: str, budget: Optional[ByteBudget]) -> bytes:
        async with httpcore.AsyncConnectionPool(ssl_context=self.ssl_context, network_backend=self.network,
                                                http1=True, http2=False, retries=0) as pool:
            url = self.check_url(raw_url)
            for _ in range(MAX_REDIRECTS + 1):
                request = httpcore.Request("GET", httpcore.URL(scheme=b"https", host=url.raw_host, port=url.port,
                                                               target=url.raw_path),
                                           headers=[(b"Host", url.netloc), (b"Accept", b"image/*"),
                                                    (b"User-Agent", b"clip-serve")])
                response = await pool.handle_async_request(request)
                try:
                    if response.status in REDIRECTS:
                        location = _header(response, b"location")
                        if not location:
                            raise UrlFetchFailed(f"HTTP {response.status} redirect without a Location")
                        url = self.check_url(str(url.join(location)))
                        continue
                    if response.status != 200:
                        raise UrlFetchFailed(f"the image host answered HTTP {response.status}")
                    return await self._read_body(response, budget)
                finally:
                    await response.aclose()
            raise UrlFetchFailed(f"more than {MAX_REDIRECTS} redirects")

    async def _read_body(self, response: httpcore.Response, budget: Optional[ByteBudget]) -> bytes:
        declared = _header(response, b"content-length")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise PayloadTooLarge(f"the image is {int(declared):,} bytes; the limit is {self.max_bytes:,} "
                                  f"(CLIP_URL_MAX_BYTES)")
        chunks, size = [], 0
        async for chunk in response.aiter_stream():  # counted as it streams: Content-Length may lie or be absent
            size += len(chunk)
            if size > self.max_bytes:
                raise PayloadTooLarge(f"the image is over {self.max_bytes:,} bytes (CLIP_URL_MAX_BYTES)")
            if budget is not None and not budget.take(len(chunk)):
                raise PayloadTooLarge("the request's images together exceed CLIP_MAX_BODY_BYTES")
            chunks.append(chunk)
        return b"".join(chunks)


def _header(response: httpcore.Response, name: bytes) -> str:
    for key, value in response.headers:
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return ""
