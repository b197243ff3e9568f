"""A stand-in DNS and network for the URL fetcher's tests: answers chosen per lookup, connections recorded."""

from __future__ import annotations

import socket
from typing import Callable, Optional

import httpcore

PUBLIC, PUBLIC_2 = "93.184.216.34", "93.184.216.35"  # public unicast: pass address_problem


def answer(*addresses: str) -> list[tuple]:
    """getaddrinfo's result for these addresses, in this order."""
    out = []
    for a in addresses:
        family = socket.AF_INET6 if ":" in a else socket.AF_INET
        sockaddr = (a, 443, 0, 0) if family == socket.AF_INET6 else (a, 443)
        out.append((family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr))
    return out


class Resolver:
    """Stands in for the loop's getaddrinfo: answers[i] is the answer to the i-th lookup (the last one repeats),
    so a test can play a rebinding DNS (public first, loopback afterwards)."""

    def __init__(self, *answers: list[tuple]):
        self.answers, self.lookups = answers, []

    async def __call__(self, host, port, *args, **kwargs) -> list[tuple]:
        self.lookups.append(host)
        return self.answers[min(len(self.lookups), len(self.answers)) - 1]


class RecordingNetwork(httpcore.AsyncNetworkBackend):
    """The inner backend of the fetcher's checked network: records every connect_tcp host. `route` maps the
    address asked for to where the connection really goes (None: refuse it, as an unreachable address would)."""

    def __init__(self, route: Callable[[str], Optional[str]] = lambda host: None):
        self.real, self.route, self.connects = httpcore.AnyIOBackend(), route, []

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        self.connects.append(host)
        target = self.route(host)
        if target is None:
            raise httpcore.ConnectError(f"nothing listens at {host}")
        return await self.real.connect_tcp(target, port, timeout, local_address, socket_options)

    async def connect_unix_socket(self, *args, **kwargs):
        raise AssertionError("never a unix socket")

    async def sleep(self, seconds: float) -> None:
        await self.real.sleep(seconds)
