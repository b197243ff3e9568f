"""A closed-loop HTTP load generator: N workers, each sends its next request as soon as the previous returns.

One point = one concurrency against one request kind:

    warm-up  : until every worker has had one answer (the queue reaches its steady state) or `warmup_s` passes
    window   : `seconds` of measurement, or until `max_requests` answers arrived in it
    end      : outstanding requests are cancelled (the server drops their queued items), not counted

Throughput counts the items of successful answers that arrived inside the window, divided by its length;
latency percentiles are over those answers too. Failures (status != 200, transport errors) are counted by kind.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import httpx
import numpy as np


@dataclass(frozen=True)
class Request:
    """One prepared HTTP request (bodies are built before the clock starts)."""

    path: str
    content: bytes
    content_type: str
    items: int = 1  # images or texts it carries (throughput is in items/s)
    method: str = "POST"


RequestFactory = Callable[[int], Request]  # n-th request of a point -> Request (unique texts etc.)


@dataclass
class PointResult:
    concurrency: int
    window_s: float  # length of the measurement window
    ok: int  # successful answers inside the window
    failed: int  # failed answers inside the window
    items_per_s: float
    requests_per_s: float
    latency_ms: dict[str, float]  # p50, p90, p99, mean, max over ok answers inside the window
    errors: dict[str, int] = field(default_factory=dict)  # "503" / "ReadTimeout" -> count (whole point)
    warmup_s: float = 0.0
    total_items: int = 0  # ok items over the whole point, warm-up included (for CPU time per item)
    client_cpu_s: float = 0.0  # CPU time of this process (the load generator) over the whole point

    def line(self) -> str:
        lat = self.latency_ms
        err = f", errors {self.errors}" if self.errors else ""
        return (f"c={self.concurrency:<4} {self.items_per_s:8.1f} items/s  p50 {lat.get('p50', float('nan')):8.1f} ms"
                f"  p99 {lat.get('p99', float('nan')):8.1f} ms  ({self.ok} ok in {self.window_s:.1f}s{err})")


def percentiles(latencies_s: list[float]) -> dict[str, float]:
    if not latencies_s:
        return {}
    ms = np.asarray(latencies_s) * 1000
    return {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()), "max": float(ms.max())}


async def run_point(url: str, make: RequestFactory, concurrency: int, seconds: float, *, warmup_s: float = 30.0,
                    max_requests: int = 100_000, timeout_s: float = 120.0,
                    headers: dict[str, str] | None = None) -> PointResult:
    """Closed-loop load at `concurrency` for `seconds` after warm-up; see the module docstring."""
    counter = itertools.count()
    answered: set[int] = set()  # workers that have had at least one answer
    records: list[tuple[float, float, int, str]] = []  # (start, end, items, "ok" | error kind)
    errors: dict[str, int] = {}
    warm = asyncio.Event()
    done = asyncio.Event()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(timeout_s, connect=30.0)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout, headers=headers or {}) as client:
        async def worker(w: int) -> None:
            while not done.is_set():
                req = make(next(counter))
                t0 = time.perf_counter()
                try:
                    r = await client.request(req.method, req.path, content=req.content,
                                             headers={"content-type": req.content_type})
                    outcome = "ok" if r.status_code == 200 else str(r.status_code)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                t1 = time.perf_counter()
                records.append((t0, t1, req.items, outcome))
                if outcome != "ok":
                    errors[outcome] = errors.get(outcome, 0) + 1
                    if outcome not in ("503", "ReadTimeout"):  # a broken request kind: no point hammering
                        await asyncio.sleep(0.05)
                answered.add(w)
                if len(answered) == concurrency:
                    warm.set()

        cpu0 = time.process_time()
        tasks = [asyncio.create_task(worker(w)) for w in range(concurrency)]
        t_start = time.perf_counter()
        try:
            await asyncio.wait_for(warm.wait(), warmup_s)
        except asyncio.TimeoutError:
            pass  # very slow requests: start measuring anyway
        w0 = time.perf_counter()
        deadline = w0 + seconds
        while time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
            if sum(1 for r in records if r[1] >= w0) >= max_requests:
                break
        w1 = time.perf_counter()
        done.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        client_cpu = time.process_time() - cpu0

    inside = [r for r in records if w0 <= r[1] <= w1]
    ok = [r for r in inside if r[3] == "ok"]
    window = max(w1 - w0, 1e-9)
    return PointResult(concurrency, round(window, 3), len(ok), len(inside) - len(ok),
                       sum(r[2] for r in ok) / window, len(ok) / window, percentiles([r[1] - r[0] for r in ok]),
                       errors, round(w0 - t_start, 3), sum(r[2] for r in records if r[3] == "ok"),
                       round(client_cpu, 3))


def run(url: str, make: RequestFactory, concurrency: int, seconds: float, **kw) -> PointResult:
    """Synchronous wrapper (a fresh event loop per point)."""
    return asyncio.run(run_point(url, make, concurrency, seconds, **kw))


def to_json(p: PointResult) -> dict:
    return asdict(p)


# --- request bodies -----------------------------------------------------------------------------------------
def multipart(fields: list[tuple[str, str | bytes, str | None]]) -> tuple[bytes, str]:
    """(name, value, filename or None) parts -> (body, content type): the bytes `curl -F` would send."""
    boundary = "clipbenchboundary7d1f"
    out = bytearray()
    for name, value, filename in fields:
        out += f"--{boundary}\r\n".encode()
        if filename is not None:
            out += (f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                    f"Content-Type: image/jpeg\r\n\r\n").encode()
        else:
            out += f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value if isinstance(value, bytes) else value.encode()
        out += b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"
