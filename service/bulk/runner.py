"""The bulk embedding loop: N concurrent requests of B items each through `AsyncClient`, rows committed in groups.

    items (not done yet) -> batches of B (one kind each) -> N workers: read / fetch -> POST -> rows
    rows -> buffer -> every G rows: one group written to the sink (a parquet part, or an .npy commit)

Rows are written in the order requests complete, not input order (the sink's `source` column says which is
which). A hard kill loses the rows buffered since the last group (fewer than G) and the requests in flight
(at most N x B items); Ctrl-C or SIGTERM also writes the buffered rows first. 503/429 answers are retried by the
client; an item the server refuses (400/413/415/422) is recorded in the errors file and the run goes on; any other
error, or a server whose fingerprint is not the output's, stops the run after writing what it has.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence, Union

import httpx
import numpy as np

from service.bulk.sinks import ErrorLog, OutputError, Rows, Sink
from service.bulk.sources import Item
from service.client import AsyncClient, ClipServeError

ITEM_STATUSES = frozenset({400, 413, 415, 422})  # the item's own fault: record it, go on with the others


@dataclass(frozen=True)
class Options:
    batch_size: int = 16  # items per request (capped by the server's per-request limit)
    concurrency: int = 4  # requests in flight
    group_size: int = 1024  # rows per committed group (parquet part file)
    fetch: str = "client"  # who downloads http(s) URLs: "client" (this process) or "server" (CLIP_ALLOW_URLS)
    crash_after_groups: Optional[int] = None  # tests only: SIGKILL this process after writing that many groups


@dataclass
class Outcome:
    item: Item
    vector: Optional[np.ndarray] = None  # float32 [D]
    error: Optional[tuple[Optional[int], str, str]] = None  # (HTTP status or None, type, message)


@dataclass
class Summary:
    total: int  # distinct items given
    skipped: int  # already in the output
    embedded: int = 0  # written by this run
    failed: int = 0  # recorded in the errors file
    seconds: float = 0.0
    model: str = ""
    fingerprint: str = ""


def send_kind(item: Item, fetch: str) -> str:
    """How an item travels: "text", "urls" (the server fetches) or "bytes" (files, and URLs this process fetched)."""
    if item.kind == "text":
        return "text"
    return "urls" if item.kind == "url" and fetch == "server" else "bytes"


def batches(items: Sequence[Item], size: int, fetch: str) -> Iterator[list[Item]]:
    """Consecutive items in batches of at most `size`, one send kind per batch."""
    batch: list[Item] = []
    for item in items:
        if batch and (len(batch) == size or send_kind(batch[0], fetch) != send_kind(item, fetch)):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


class Downloader:
    """Fetches http(s) images for `--fetch client`: redirects followed, a deadline and a size cap per image."""

    def __init__(self, max_bytes: int, timeout_s: float = 30.0):
        self.max_bytes = max_bytes
        self.http = httpx.AsyncClient(follow_redirects=True, timeout=timeout_s)

    async def fetch(self, url: str) -> bytes:
        async with self.http.stream("GET", url) as r:
            if r.status_code != 200:
                raise OSError(f"HTTP {r.status_code} from {url}")
            data = bytearray()
            async for chunk in r.aiter_bytes():
                data += chunk
                if len(data) > self.max_bytes:
                    raise OSError(f"larger than {self.max_bytes} bytes (the server's CLIP_MAX_BODY_BYTES)")
            return bytes(data)

    async def aclose(self) -> None:
        await self.http.aclose()


class BulkRun:
    """One `clip-serve embed` run against a client, into a sink."""

    def __init__(self, client: AsyncClient, sink: Sink, errors: ErrorLog, options: Options,
                 progress: Optional[Any] = None):
        self.client, self.sink, self.errors, self.opts, self.progress = client, sink, errors, options, progress
        self.model = self.fingerprint = ""
        self.buffer: list[tuple[str, np.ndarray]] = []
        self.groups = 0
        self.downloader: Optional[Downloader] = None
        self.max_image_bytes = 20 * 2**20

    async def prepare(self, texts: bool) -> int:
        """Check the server against the output; returns the batch size the server accepts."""
        info = await self.client.info()
        if self.sink.fingerprint is not None and self.sink.fingerprint != info.fingerprint:
            raise OutputError(f"the output holds embeddings of model {self.sink.model} (fingerprint "
                              f"{self.sink.fingerprint}), but the server serves {info.model} (fingerprint "
                              f"{info.fingerprint}): resume against the same model, or write to another --out")
        self.model, self.fingerprint = info.model, info.fingerprint
        self.client.fingerprint = info.fingerprint  # every answer from now on must carry it
        limits = info.raw.get("limits", {})
        self.max_image_bytes = int(limits.get("max_body_bytes", 20 * 2**20))
        per_request = int(limits.get("max_texts_per_request" if texts else "max_images_per_request", 64))
        return max(1, min(self.opts.batch_size, per_request))

    async def run(self, items: Sequence[Item], todo: Sequence[Item]) -> Summary:
        summary = Summary(len(items), len(items) - len(todo))
        start = time.perf_counter()
        batch_size = await self.prepare(texts=bool(todo) and todo[0].kind == "text")
        summary.model, summary.fingerprint = self.model, self.fingerprint
        queue = batches(todo, batch_size, self.opts.fetch)  # shared by the workers: next() never awaits
        workers = [asyncio.create_task(self._worker(queue, summary)) for _ in range(self.opts.concurrency)]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            self._commit(everything=True)  # what was computed before an error or Ctrl-C is kept
            if self.downloader is not None:
                await self.downloader.aclose()
            summary.seconds = time.perf_counter() - start
        return summary

    async def _worker(self, queue: Iterator[list[Item]], summary: Summary) -> None:
        for batch in queue:
            outcomes = await self._embed(batch)
            for o in outcomes:
                if o.error is None:
                    self.buffer.append((o.item.source, o.vector))  # type: ignore[arg-type]
                else:
                    self.errors.record(o.item.source, *o.error)
            summary.embedded += sum(o.error is None for o in outcomes)
            summary.failed += sum(o.error is not None for o in outcomes)
            if self.progress is not None:
                self.progress.update(len(outcomes))
                if summary.failed:
                    self.progress.set_postfix(errors=summary.failed, refresh=False)
            self._commit()

    def _commit(self, everything: bool = False) -> None:
        """Write full groups (all buffered rows when `everything`). Synchronous on purpose: a group is written
        while the server works on the requests in flight, and no await can interleave two writes."""
        while len(self.buffer) >= self.opts.group_size or (everything and self.buffer):
            group, self.buffer = self.buffer[:self.opts.group_size], self.buffer[self.opts.group_size:]
            self.sink.write(Rows([s for s, _ in group], np.stack([v for _, v in group]), self.model,
                                 self.fingerprint))
            self.groups += 1
            if self.opts.crash_after_groups is not None and self.groups >= self.opts.crash_after_groups:
                os.kill(os.getpid(), signal.SIGKILL)  # a crash, as a test needs one: nothing else gets written

    async def _embed(self, batch: list[Item]) -> list[Outcome]:
        kind = send_kind(batch[0], self.opts.fetch)
        if kind in ("text", "urls"):  # the request carries the sources themselves
            return await self._send(kind, batch, [it.source for it in batch])
        loaded = await self._load(batch)
        failed = [Outcome(it, error=(None, "read_error", f"{type(r).__name__}: {r}"))
                  for it, r in zip(batch, loaded) if isinstance(r, Exception)]
        ok = [(it, r) for it, r in zip(batch, loaded) if not isinstance(r, BaseException)]
        sent = await self._send(kind, [it for it, _ in ok], [r for _, r in ok]) if ok else []
        return failed + sent

    async def _load(self, batch: list[Item]) -> list[Union[bytes, Exception]]:
        """Each item's bytes, or why it could not be had: files read in one worker thread, URLs fetched here."""
        files = [it.location for it in batch if it.kind == "file"]
        read = iter(await asyncio.to_thread(_read_files, files) if files else [])
        urls = [it.source for it in batch if it.kind == "url"]
        if urls and self.downloader is None:  # made on first use: its TLS set-up loads the CA bundle
            self.downloader = Downloader(self.max_image_bytes)
        fetched = iter(await asyncio.gather(*(self.downloader.fetch(u) for u in urls),  # type: ignore[union-attr]
                                            return_exceptions=True))
        return [next(read) if it.kind == "file" else next(fetched) for it in batch]  # type: ignore[misc]

    async def _send(self, kind: str, items: list[Item], payloads: list[Any]) -> list[Outcome]:
        """One request; when the server refuses it for an item's sake, each item alone, to find which."""
        try:
            if kind == "text":
                emb = await self.client.embed_texts(payloads)
            elif kind == "urls":
                emb = await self.client.embed_image_urls(payloads)
            else:
                emb = await self.client.embed_images(payloads)
        except ClipServeError as exc:
            if exc.status not in ITEM_STATUSES:
                raise
            if len(items) == 1:
                return [Outcome(items[0], error=(exc.status, exc.type, exc.message))]
            alone = await asyncio.gather(*(self._send(kind, [it], [p]) for it, p in zip(items, payloads)))
            return [o for outcomes in alone for o in outcomes]
        return [Outcome(it, vector=v) for it, v in zip(items, emb.vectors)]


def _read_files(paths: list[str]) -> list[Union[bytes, Exception]]:
    out: list[Union[bytes, Exception]] = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                out.append(f.read())
        except OSError as exc:
            out.append(exc)
    return out

