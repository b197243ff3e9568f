"""The batcher in isolation: a plain queue, a fake encoder, no server."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.batcher import Batcher, WorkItem, collect
from service.errors import BackendFailure, DeadlineExceeded, Overloaded, PayloadTooLarge
from service.metrics import Metrics


def run(coro):
    return asyncio.run(coro)


def test_collect_fills_to_max_batch_then_stops():
    async def go():
        q: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        for i in range(10):
            q.put_nowait(WorkItem(np.array([i]), loop.create_future(), 1e9))
        first = await collect(q, max_batch=4, max_wait_s=0.5)
        return [int(i.payload[0]) for i in first], q.qsize()
    assert run(go()) == ([0, 1, 2, 3], 6)


def test_collect_waits_at_most_max_wait_after_the_first_item():
    """An item 10 ms after the first joins its batch; one 3 s later does not: collection stopped after the 100 ms
    window. Bounds a loaded machine keeps: the window is never cut short, and 30 windows are a stall nobody has."""
    async def go():
        q: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        q.put_nowait(WorkItem(np.array([0]), loop.create_future(), 1e9))
        loop.call_later(0.01, q.put_nowait, WorkItem(np.array([1]), loop.create_future(), 1e9))
        loop.call_later(3.0, q.put_nowait, WorkItem(np.array([2]), loop.create_future(), 1e9))
        start = loop.time()
        items = await asyncio.wait_for(collect(q, max_batch=8, max_wait_s=0.1), 30)
        return len(items), loop.time() - start
    n, waited = run(go())
    assert n == 2 and 0.09 <= waited < 3.0, (n, waited)  # 0.09: asyncio may fire a timer a hair early


class FakeEncoder:
    """Doubles inputs; fails on poisoned rows (value -1) or on batches over `oom_over` rows."""

    def __init__(self, oom_over: int | None = None):
        self.calls: list[int] = []
        self.oom_over = oom_over

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(len(batch))
        if self.oom_over and len(batch) > self.oom_over:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if (batch == -1).any():
            raise ValueError("poisoned item")
        return batch * 2.0


def _batcher(enc, **kw) -> tuple[Batcher, Metrics]:
    m = Metrics()
    params = dict(max_batch=8, max_wait_s=0.02, max_queue=64) | kw
    return Batcher("image", enc, ThreadPoolExecutor(1), m, **params), m


def test_results_come_back_in_order_and_batched():
    enc = FakeEncoder()

    async def go():
        b, _ = _batcher(enc)
        b.start()
        outs = await asyncio.gather(*(b.submit([np.array([float(i)])], 1e12) for i in range(6)))
        await b.stop()
        return [float(o[0][0]) for o in outs]
    assert run(go()) == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert max(enc.calls) > 1


def test_a_bad_item_fails_alone():
    enc = FakeEncoder()

    async def go():
        b, m = _batcher(enc)
        b.start()
        good = b.submit([np.array([1.0]), np.array([2.0])], 1e12)
        bad = b.submit([np.array([-1.0])], 1e12)
        res = await asyncio.gather(good, bad, return_exceptions=True)
        await b.stop()
        return res, m.backend_errors.labels("error")._value.get()
    (good, bad), errors = run(go())
    assert [float(x[0]) for x in good] == [2.0, 4.0]
    assert isinstance(bad, BackendFailure) and errors >= 1


def test_a_fatal_error_fails_the_whole_batch_at_once_and_is_reported():
    """After a broken-device error nothing is retried on the device: every item of the batch fails with 503."""
    calls, fatal = [], []

    def broken(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        raise RuntimeError("CUDA error: an illegal memory access was encountered " + "x" * 400)

    async def go():
        m = Metrics()
        b = Batcher("image", broken, ThreadPoolExecutor(1), m, max_batch=8, max_wait_s=0.05, max_queue=64,
                    on_fatal=fatal.append)
        b.start()
        res = await asyncio.gather(b.submit([np.array([float(i)]) for i in range(3)], 1e12), return_exceptions=True)
        await b.stop()
        return res[0], m.backend_errors.labels("fatal")._value.get()
    failure, counted = run(go())
    assert calls == [3] and len(fatal) == 1 and counted == 1
    assert isinstance(failure, BackendFailure) and failure.retry_after == 1
    assert failure.message == ("the image encoder failed: CUDA error: an illegal memory access was encountered "
                               + "x" * 400)[:300]


def test_oom_halves_the_batch_down_to_what_fits():
    enc = FakeEncoder(oom_over=2)

    async def go():
        b, m = _batcher(enc, max_wait_s=0.05)
        b.start()
        out = await b.submit([np.array([float(i)]) for i in range(8)], 1e12)
        await b.stop()
        return out, m.backend_errors.labels("oom")._value.get()
    out, ooms = run(go())
    assert [float(x[0]) for x in out] == [2.0 * i for i in range(8)]
    assert ooms >= 1 and 8 in enc.calls and 4 in enc.calls and max(c for c in enc.calls if c <= 2) == 2


def test_admission_cap_rejects_at_once():
    async def go():
        b, m = _batcher(FakeEncoder(), max_queue=3)
        with b.reserve(2):  # reserved before preprocessing: counts against the cap
            with pytest.raises(Overloaded):
                await b.submit([np.array([1.0])] * 2, 1e12)
        with pytest.raises(PayloadTooLarge):  # could never fit: not worth a retry, so 413 rather than 503
            await b.submit([np.array([1.0])] * 4, 1e12)
        return m.rejected.labels("queue_full")._value.get(), b.depth
    assert run(go()) == (1, 0)


class Preprocessing(Exception):
    """Stands for whatever can fail between reserving room and submitting (a bad image, a passed deadline)."""


def test_a_reservation_is_given_back_when_its_block_fails_or_is_cancelled():
    """Room reserved for work that never reaches the queue comes back, however the block ends: an error, a
    cancellation (the client left while its images were decoded), or no submit at all. Else the queue would look
    full for good after max_queue such requests."""
    async def go():
        b, _ = _batcher(FakeEncoder(), max_queue=4)
        b.start()
        seen = []
        with pytest.raises(Preprocessing):
            with b.reserve(4):
                seen.append(b.depth)
                raise Preprocessing()
        seen.append(b.depth)

        entered = asyncio.Event()

        async def decoding_when_the_client_leaves():
            with b.reserve(3):
                entered.set()
                await asyncio.Event().wait()  # never submitted: cancelled while "decoding"

        task = asyncio.ensure_future(decoding_when_the_client_leaves())
        await asyncio.wait({task, asyncio.ensure_future(entered.wait())}, return_when=asyncio.FIRST_COMPLETED)
        seen.append(b.depth)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        seen.append(b.depth)

        with b.reserve(4):  # left without a submit
            pass
        seen.append(b.depth)
        with b.reserve(4) as room:  # the whole queue is free again: room for 4, submitted and answered
            out = await room.submit([np.array([float(i)]) for i in range(4)], 1e12)
        await b.stop()
        return seen, [float(o[0]) for o in out], b.depth
    seen, out, depth = run(go())
    assert seen == [4, 0, 3, 0, 0]
    assert out == [0.0, 2.0, 4.0, 6.0] and depth == 0


def test_submitted_room_is_given_back_by_the_batcher_not_twice():
    """Once submitted, the items hold the room until the batcher has taken them off the queue; leaving the block
    then (the client left while they waited) must not give it back a second time."""
    async def go():
        b, m = _batcher(FakeEncoder(), max_queue=4)

        async def waiting_for_the_encoder():
            with b.reserve(2) as room:
                await room.submit([np.array([1.0]), np.array([2.0])], 1e12)

        task = asyncio.ensure_future(waiting_for_the_encoder())
        for _ in range(1000):  # until queued (the batcher is not started yet)
            if b.queue.qsize() == 2:
                break
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        still_held = b.depth  # the two items are still on the queue
        b.start()
        for _ in range(5000):  # the batcher drops them (their client left) and gives their room back
            if not b.depth:
                break
            await asyncio.sleep(0.001)
        await b.stop()
        return still_held, b.depth, m.dropped.labels("image")._value.get()
    assert run(go()) == (2, 0, 2)


def test_a_room_takes_one_submit_of_its_size():
    async def go():
        b, _ = _batcher(FakeEncoder())
        with b.reserve(2) as room:
            with pytest.raises(ValueError):
                await room.submit([np.array([1.0])], 1e12)
        return b.depth
    assert run(go()) == 0


def test_expired_and_abandoned_items_are_not_computed():
    enc = FakeEncoder()

    async def go():
        b, m = _batcher(enc)
        loop = asyncio.get_running_loop()
        expired = asyncio.ensure_future(b.submit([np.array([1.0])], loop.time() - 1))
        abandoned = asyncio.ensure_future(b.submit([np.array([2.0])], 1e12))
        await asyncio.sleep(0)
        abandoned.cancel()
        b.start()
        res = await asyncio.gather(expired, abandoned, return_exceptions=True)
        limit = loop.time() + 30
        while b.depth and loop.time() < limit:  # the batcher has not taken both items off the queue yet
            await asyncio.sleep(0.01)
        await b.stop()
        return res, m.dropped.labels("image")._value.get(), b.depth
    (exp, ab), dropped, depth = run(go())
    assert isinstance(exp, DeadlineExceeded) and isinstance(ab, asyncio.CancelledError)
    assert dropped == 1 and depth == 0 and enc.calls == []


def test_two_batches_in_flight_overlap_and_each_item_gets_its_own_answer():
    """in_flight = 2 (a CUDA engine process): a second batch starts while the first is still in the encoder; with
    in_flight = 1 the second would wait, and the barrier below would never be passed by two calls."""
    import threading

    both_in = threading.Barrier(2, timeout=10)

    def encode(batch: np.ndarray) -> np.ndarray:
        both_in.wait()  # returns only once two encoder calls are in at the same time
        return batch * 2.0

    async def go():
        pool = ThreadPoolExecutor(2)
        b = Batcher("image", encode, pool, Metrics(), max_batch=2, max_wait_s=0.0, max_queue=16)
        b.in_flight = 2
        b.start()
        loop = asyncio.get_running_loop()
        first = asyncio.ensure_future(b.submit([np.array([1.0]), np.array([2.0])], loop.time() + 30))
        await asyncio.sleep(0)  # the first batch is collected alone
        second = asyncio.ensure_future(b.submit([np.array([3.0])], loop.time() + 30))
        out = await asyncio.wait_for(asyncio.gather(first, second), 20)
        depth = b.depth
        await b.stop()
        pool.shutdown()
        return [[float(x[0]) for x in r] for r in out], depth

    assert run(go()) == ([[2.0, 4.0], [6.0]], 0)


def test_an_items_encoder_gets_the_items_themselves_not_a_stacked_copy():
    """`encode_items` (an engine on a GPU: service/device_pixels.py copies each image once, into its pinned upload
    buffer): called with the queued arrays themselves, never with np.stack's copy of them, and `encode` is not
    called; its rows still answer each item, a bad item still fails alone, and batches are counted by their items."""
    seen: list[list[np.ndarray]] = []

    def encode_items(items):
        seen.append(list(items))
        if any((x == -1).any() for x in items):
            raise ValueError("poisoned item")
        return np.stack(items) * 2.0

    async def go():
        b, m = _batcher(FakeEncoder(oom_over=0))  # `encode` would raise on any batch: it must not be called
        b.encode_items = encode_items
        b.start()
        payloads = [np.array([float(i)]) for i in range(3)]
        good = b.submit(payloads, 1e12)
        bad = b.submit([np.array([-1.0])], 1e12)
        res = await asyncio.gather(good, bad, return_exceptions=True)
        await b.stop()
        return payloads, res, m.batch_size.labels("image")._sum.get()

    payloads, (good, bad), counted = run(go())
    assert [float(x[0]) for x in good] == [0.0, 2.0, 4.0]
    assert isinstance(bad, BackendFailure)
    assert any(x is payloads[0] for x in seen[0])  # the very array queued: no copy was made on the way
    assert counted == 3  # the items of the calls that returned (a failed batch is retried item by item)
