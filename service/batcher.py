"""Dynamic batching: one bounded queue per modality, filled until max batch or max wait, run off the loop.

    with reserve(n) as room: (cap on reserved + queued + in-flight items, checked before any preprocessing)
        room.submit(items) -> queue -> collect() -> drop items whose client left or whose deadline passed
        -> encoder in the inference thread -> futures resolved
    (leaving the block without submitting gives the room back)
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from service import tracing
from service.errors import BackendFailure, DeadlineExceeded, NotReady, Overloaded, PayloadTooLarge
from service.metrics import Metrics

log = logging.getLogger("service.batcher")

Encode = Callable[[np.ndarray], np.ndarray]  # [B, ...] -> [B, D]
# the batch's items -> [B, D]: an encoder that assembles the batch itself, straight into its own upload buffer
EncodeItems = Callable[[Sequence[np.ndarray]], np.ndarray]


@dataclass
class WorkItem:
    payload: np.ndarray  # one item: pixels [3, H, W] float32 or token ids [L] int64
    future: asyncio.Future  # resolves to its embedding [D]
    deadline: float  # loop time by which inference must start
    enqueued: float = field(default_factory=time.monotonic)
    trace: Optional[tracing.QueueWait] = None  # the request's queue_wait span (None when tracing is off)


async def collect(queue: asyncio.Queue, max_batch: int, max_wait_s: float) -> list[WorkItem]:
    """Wait for one item, then take more until `max_batch` items or `max_wait_s` after the first.

    One timeout for the whole window, not a `wait_for` per item (in Python 3.11 each wraps its wait in a task and a
    timer: ~5 % of an engine process's event loop under load). A `queue.get()` cut short loses nothing: the item
    stays queued until `get_nowait` takes it."""
    items = [await queue.get()]
    try:
        async with asyncio.timeout(max_wait_s):
            while len(items) < max_batch:
                items.append(queue.get_nowait() if not queue.empty() else await queue.get())
    except TimeoutError:
        pass
    return items


# Device errors as torch and ONNX Runtime word them (exact formats in tests/service/test_batcher_unit.py):
#   torch (c10/ATen):  "CUDA out of memory. Tried to allocate ...", "CUDA error: an illegal memory access ...",
#                      "CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm(...)`",
#                      "cuDNN error: CUDNN_STATUS_EXECUTION_FAILED", "CUDA driver error: ..."
#   ONNX Runtime:      "<lib> failure <code>: <text> ; GPU=0 ; hostname=... ; expr=...;" with lib CUDA, CUBLAS,
#                      CUDNN, CUFFT, CURAND, CUSPARSE, NCCL (cuda_call.cc), and its arena's
#                      "Failed to allocate memory for requested buffer of size N" (bfc_arena.cc)
_OOM = re.compile(r"out of memory|failed to allocate memory for requested buffer|_STATUS_ALLOC_FAILED",
                  re.IGNORECASE)
_DEVICE_ERROR = re.compile(r"\b(?:CUDA|CUBLAS|CUDNN|CUFFT|CURAND|CUSPARSE|NCCL)(?: driver)? (?:error|failure)\b"
                           r"|device-side assert|illegal memory access|unspecified launch failure", re.IGNORECASE)


def is_oom(exc: BaseException) -> bool:
    """Out of device memory: worth retrying with a smaller batch."""
    return type(exc).__name__ == "OutOfMemoryError" or bool(_OOM.search(str(exc)))


def is_fatal(exc: BaseException) -> bool:
    """Errors after which the device cannot be trusted (the process should be replaced)."""
    return bool(_DEVICE_ERROR.search(str(exc))) and not is_oom(exc)


class Batcher:
    """Batches one modality's items for one encoder function."""

    def __init__(self, modality: str, encode: Encode, executor: Executor, metrics: Metrics, *, max_batch: int,
                 max_wait_s: float, max_queue: int, on_fatal: Optional[Callable[[BaseException], None]] = None):
        self.modality, self.encode, self.executor, self.metrics = modality, encode, executor, metrics
        # read afresh for each batch, so it may change while serving (service/batch_refine.py raises it)
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self.on_fatal = on_fatal
        # set: called with the items instead of `encode` with np.stack(items), so that an engine on a GPU copies each
        # image once, into its pinned upload buffer, not first into a batch and then into that buffer
        self.encode_items: Optional[EncodeItems] = None
        self.queue: asyncio.Queue[WorkItem] = asyncio.Queue()
        self.depth = 0  # queued + in-flight items (what admission caps)
        self._depth_gauge, self._depth_shown = metrics.queue_depth.labels(modality), True
        # this modality's series, looked up once (a labels() call takes a lock and builds a key each time)
        self._queue_wait, self._dropped = metrics.queue_wait.labels(modality), metrics.dropped.labels(modality)
        self._inference, self._batch_size = metrics.inference.labels(modality), metrics.batch_size.labels(modality)
        self.taken = 0  # items ever admitted: a change says work came, even work already done (batch_refine.py)
        self.closed = False
        # encoder calls at once: 1, except in a CUDA engine process (service/engine_server.py), where 2 let one
        # batch upload while the other computes; the executor must then have as many threads
        self.in_flight = 1
        self._task: Optional[asyncio.Task] = None
        self._running: set[asyncio.Task] = set()
        metrics.queue_capacity.labels(modality).set(max_queue)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.modality}")
        self._task.add_done_callback(self._died)

    def _died(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:  # never die silently
            log.error("%s batcher stopped: %r", self.modality, task.exception())
            if self.on_fatal:
                self.on_fatal(task.exception())

    async def stop(self) -> None:
        self.closed = True
        for task in [self._task, *self._running]:
            if task:
                task.cancel()
        await asyncio.gather(*(t for t in [self._task, *self._running] if t), return_exceptions=True)

    def _set_depth(self, delta: int) -> None:
        """Count items in or out; the gauge is written once per event-loop iteration (a write to prometheus_client's
        shared file in a process of CLIP_WORKERS >= 1 was ~3 % of an engine's event loop, twice per request)."""
        self.depth += delta
        if self._depth_shown:
            self._depth_shown = False
            try:
                asyncio.get_running_loop().call_soon(self._show_depth)
            except RuntimeError:  # no loop running (a unit test reserving directly): now
                self._show_depth()

    def _show_depth(self) -> None:
        self._depth_shown = True
        self._depth_gauge.set(self.depth)

    @contextmanager
    def reserve(self, n: int) -> Iterator["QueueRoom"]:
        """Room for n items (all or none), or a refusal at once: 503 when the queue is full. Taken before
        preprocessing, so a full queue answers in microseconds instead of after decoding. Inside the block,
        `room.submit(items)` queues them; leaving the block any other way (an error, the client leaving) gives the
        room back, so no path can leave the queue looking fuller than it is."""
        self._take(n)
        room = QueueRoom(self, n)
        try:
            yield room
        finally:
            if not room.submitted:
                self._set_depth(-n)

    def _take(self, n: int) -> None:
        if self.closed:
            self.metrics.rejected.labels("draining").inc()
            raise NotReady("server is shutting down", retry_after=1)
        if n > self.max_queue:  # would never fit: retrying cannot help, so not a 503
            raise PayloadTooLarge(f"{n} {self.modality} items in one request can never fit the queue of "
                                  f"{self.max_queue} (CLIP_MAX_QUEUE); send fewer per request")
        if self.depth + n > self.max_queue:
            self.metrics.rejected.labels("queue_full").inc()
            raise Overloaded(f"{self.modality} queue is full ({self.depth}/{self.max_queue} items, "
                             f"CLIP_MAX_QUEUE); retry later", retry_after=1)
        self._set_depth(n)
        self.taken += n

    def queue_now(self, payloads: list[np.ndarray], deadline: float) -> list[asyncio.Future]:
        """Admit and queue items in one step, without a coroutine (an engine process's untraced `embed`,
        service/engine_server.py): their futures, or the refusal (503 / 413) raised at once. Once queued, the items
        are the batcher's to count out, as after `QueueRoom.submit`; a caller that stops waiting cancels the futures,
        and the batcher drops those items."""
        self._take(len(payloads))
        return [i.future for i in self._put(payloads, deadline)]

    async def submit(self, payloads: list[np.ndarray], deadline: float) -> list[np.ndarray]:
        """Reserve room, queue items (all or none) and wait for their embeddings, in order."""
        with self.reserve(len(payloads)) as room:
            return await room.submit(payloads, deadline)

    def _put(self, payloads: list[np.ndarray], deadline: float,
             trace: Optional[tracing.QueueWait] = None) -> list[WorkItem]:
        loop = asyncio.get_running_loop()
        items = [WorkItem(p, loop.create_future(), deadline, trace=trace) for p in payloads]
        for item in items:
            self.queue.put_nowait(item)
        return items

    async def _enqueue(self, payloads: list[np.ndarray], deadline: float) -> list[np.ndarray]:
        wait = tracing.queued(self.modality, len(payloads))
        items = self._put(payloads, deadline, wait)
        try:
            if len(items) == 1:  # most requests: its future itself, not a gather's future and callbacks around it
                return [await items[0].future]
            return list(await asyncio.gather(*(i.future for i in items)))
        finally:
            for i in items:  # the client went away or a sibling failed: the batcher will skip these
                if not i.future.done():
                    i.future.cancel()
            if wait is not None:
                wait.close()

    async def _loop(self) -> None:
        slots = asyncio.Semaphore(self.in_flight)
        while True:
            await slots.acquire()  # collect the next batch only when an encoder call may start
            items = await collect(self.queue, self.max_batch, self.max_wait_s)
            if self.in_flight == 1:
                await self._batch(items)
                slots.release()
                continue
            task = asyncio.ensure_future(self._batch(items))
            self._running.add(task)
            task.add_done_callback(lambda t: (self._running.discard(t), slots.release(), self._batch_done(t)))

    async def _batch(self, items: list[WorkItem]) -> None:
        try:
            live = self._live(items)
            if live:
                await self._run(live)
        finally:
            self._set_depth(-len(items))

    def _batch_done(self, task: asyncio.Task) -> None:
        """A batch run beside the loop (in_flight > 1) must not fail silently either."""
        if not task.cancelled() and task.exception() is not None and self._task is not None:
            self._died(task)

    def _live(self, items: list[WorkItem]) -> list[WorkItem]:
        """Drop cancelled items (client gone) and fail expired ones, without computing them."""
        now_loop, now = asyncio.get_running_loop().time(), time.monotonic()
        live = []
        for item in items:
            if item.future.done():
                self._dropped.inc()
            elif now_loop > item.deadline:
                self.metrics.rejected.labels("deadline").inc()
                item.future.set_exception(DeadlineExceeded("request waited past its deadline "
                                                           "(CLIP_REQUEST_TIMEOUT_S); retry later", retry_after=1))
            else:
                self._queue_wait.observe(now - item.enqueued)
                if item.trace is not None:
                    item.trace.taken()
                live.append(item)
        return live

    def _encode_timed(self, payloads: list[np.ndarray], waits: list[Optional[tracing.QueueWait]]) -> np.ndarray:
        """In the inference thread: stack the items into one batch (a copy of every item: off the event loop), time
        the encoder on it and count the batch. An `encode_items` encoder takes the items and assembles the batch
        itself (its copy into the upload buffer is then part of the time: a GPU's upload is)."""
        batch = np.stack(payloads) if self.encode_items is None else payloads
        start = time.perf_counter()
        with tracing.inference(self.modality, len(payloads), waits):  # links to each request served
            out = self.encode(batch) if self.encode_items is None else self.encode_items(batch)
        self._inference.observe(time.perf_counter() - start)
        self._batch_size.observe(len(payloads))
        return out

    async def _run(self, items: list[WorkItem]) -> None:
        """Encode items; on failure isolate the culprit (halve on OOM, else one by one)."""
        loop = asyncio.get_running_loop()
        try:
            out = await loop.run_in_executor(self.executor, self._encode_timed, [i.payload for i in items],
                                             [i.trace for i in items])
        except Exception as exc:  # noqa: BLE001 - any encoder failure is isolated, counted and reported
            await self._isolate(items, exc)
            return
        for item, row in zip(items, out):
            if not item.future.done():
                item.future.set_result(row)

    async def _isolate(self, items: list[WorkItem], exc: Exception) -> None:
        kind = "oom" if is_oom(exc) else "fatal" if is_fatal(exc) else "error"
        self.metrics.backend_errors.labels(kind).inc()
        log.warning("%s batch of %d failed (%s): %r", self.modality, len(items), kind, exc)
        if kind == "fatal" and self.on_fatal:
            self.on_fatal(exc)
        if len(items) == 1 or kind == "fatal":
            for item in items:
                if not item.future.done():
                    item.future.set_exception(BackendFailure(f"the {self.modality} encoder failed: {exc}"[:300],
                                                             retry_after=1))
            return
        if kind == "oom":  # halve and retry, down to single items
            half = len(items) // 2
            await self._run(items[:half])
            await self._run(items[half:])
            return
        for item in items:  # retry alone, so only the culprit fails
            await self._run([item])


class QueueRoom:
    """Room reserved in one batcher's queue (Batcher.reserve). Submitting hands it to the queued items, which the
    batcher gives back as it finishes them; room never submitted is given back when the `with` block ends."""

    def __init__(self, batcher: Batcher, n: int):
        self.batcher, self.n = batcher, n
        self.submitted = False

    async def submit(self, payloads: list[np.ndarray], deadline: float) -> list[np.ndarray]:
        """Queue the n items this room was reserved for and wait for their embeddings, in order."""
        if self.submitted:
            raise RuntimeError("this room was submitted already; reserve again for more items")
        if len(payloads) != self.n:
            raise ValueError(f"room for {self.n} items, {len(payloads)} submitted")
        self.submitted = True  # from here the batcher loop releases each item as it takes it off the queue
        return await self.batcher._enqueue(payloads, deadline)
