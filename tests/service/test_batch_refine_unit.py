"""Finishing a cut-short batch size probe after ready (service/batch_refine.py): timed on a fake clock, only while a
fake engine is idle, a size a request disturbed timed again, and the new cap served by a real batcher."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest

from export.batch_knee import cache_knees, cached_knees, cached_partial, knee
from service.batch_probe import CALLS, BatchCurve, measure
from service.batch_refine import adopt, finish, finish_probes, unfinished
from service.batcher import Batcher
from service.lifecycle import Lifecycle
from service.metrics import Metrics
from service.settings import Settings
from tests.service.fake_backend import NamedBackend


def run(coro):
    return asyncio.run(coro)


class Quiet:
    """A fake engine's batchers: `depth` items in them now, `taken` ever; idle() counts how often it was asked."""

    def __init__(self):
        self.depth, self.taken, self.asked = 0, 0, 0

    def idle(self) -> bool:
        self.asked += 1
        return self.depth == 0

    def activity(self) -> int:
        return self.taken

    def arrive(self) -> None:
        self.depth += 1
        self.taken += 1


class Clock:
    """A fake timer that only encoder calls advance, by cost(n); records each call's size and whether the engine was
    idle when it began."""

    def __init__(self, cost, quiet: Quiet):
        self.now, self.cost, self.quiet, self.calls, self.busy_calls = 0.0, cost, quiet, [], 0

    def __call__(self) -> float:
        return self.now

    def encode(self, x: np.ndarray) -> None:
        self.busy_calls += self.quiet.depth > 0
        self.calls.append(len(x))
        self.now += self.cost(len(x))


async def inline(fn, *args):
    """The inference thread, stood in for by the caller (the fake clock needs no thread)."""
    return fn(*args)


def make(n: int) -> np.ndarray:
    return np.zeros((n, 1), dtype=np.float32)


def rising(n: int) -> float:
    """Seconds per call of a curve still gaining at every size: 1 / 1.9 / 3.6 / 6.7 / 12.3 / 22.9 items/ms."""
    return 0.001 * (0.5 + 0.5 * n) / min(n, 32) ** 0.05


def cut_short(quiet: Quiet) -> BatchCurve:
    """The warm-up probe of `rising` with a budget that reaches batch 2."""
    clock = Clock(rising, quiet)
    curve = measure("image", make, clock.encode, 32, budget_s=0.02, timer=clock)
    assert not curve.complete and curve.cap == max(curve.items_per_s) == 2 and unfinished(curve)
    return curve


def test_a_cut_short_rising_curve_is_finished_with_the_sizes_it_lacks():
    quiet = Quiet()
    curve = cut_short(quiet)
    clock = Clock(rising, quiet)
    done = run(finish(curve, make, clock.encode, 32, inline, quiet, timer=clock, poll_s=0))
    assert done.complete and list(done.items_per_s) == [1, 2, 4, 8, 16, 32]
    assert {1, 2}.isdisjoint(clock.calls)  # the sizes measured at warm-up are kept, not run again
    assert clock.calls.count(4) == 1 + CALLS  # a first call untimed, then CALLS timed
    assert done.items_per_s[4] == pytest.approx(4 / rising(4))
    assert done.cap == knee(done.items_per_s) > 2 and done.source == "warm-up+idle"
    assert not unfinished(done)


def test_the_probe_waits_while_a_request_is_in_the_batchers():
    """A request in the batchers (reserved, queued or encoding) holds the probe back: no encoder call starts until
    they are empty, so a request waits for one probe call at most."""
    quiet = Quiet()
    curve = cut_short(quiet)

    def cost(n: int) -> float:
        if len(clock.calls) == 2:  # the first timed call at batch 4: a request comes in during it
            quiet.arrive()
        return rising(n)

    clock = Clock(cost, quiet)

    async def until_asked(times: int) -> None:
        asked = quiet.asked
        while quiet.asked < asked + times:
            await asyncio.sleep(0)

    async def scenario():
        quiet.arrive()  # a request is being served when the probe starts
        task = asyncio.create_task(finish(curve, make, clock.encode, 32, inline, quiet, timer=clock, poll_s=0))
        await until_asked(20)
        assert clock.calls == []  # it waited
        quiet.depth = 0  # served
        while quiet.depth == 0:  # until the request that comes during a probe call
            await asyncio.sleep(0)
        await until_asked(20)
        assert clock.calls == [4, 4]  # no call after the one it came during, while it is in
        quiet.depth = 0
        return await task

    done = run(scenario())
    assert clock.busy_calls == 0 and done.complete
    assert clock.calls.count(4) == 2 + CALLS  # the disturbed timing thrown away, all CALLS timed again


def test_a_size_a_request_disturbed_is_timed_again_and_the_knee_is_right():
    """A request that comes during a size's timed calls (its decoding competing for the cores) slows them; those
    timings are thrown away and the size timed again once the engine is idle, so the knee is the undisturbed one."""
    quiet = Quiet()
    # undisturbed: 4 reaches 96% of 8's items/s, so 4 is the knee; disturbed, batch 4 measures 30% slower
    true = {1: 0.001, 2: 0.0015, 4: 0.004 / 1.92, 8: 0.004}
    disturbed = {"on": False}

    def cost(n: int) -> float:
        if n == 4 and clock.calls.count(4) == 2:  # during the first timed call at 4: a request comes
            quiet.taken += 1  # in and (as far as the probe can see) already gone: only the count says so
            disturbed["on"] = True
        slow = disturbed["on"] and n == 4 and clock.calls.count(4) <= 1 + CALLS
        return true[n] * (1 / 0.7 if slow else 1)

    clock = Clock(cost, quiet)
    curve = BatchCurve("image", {1: 1 / true[1], 2: 2 / true[2]}, complete=False, cap=2)
    done = run(finish(curve, make, clock.encode, 8, inline, quiet, timer=clock, poll_s=0))
    assert clock.calls.count(4) > 1 + CALLS  # timed again
    assert done.items_per_s[4] == pytest.approx(4 / true[4])
    assert done.cap == 4


def test_the_new_cap_is_served_from_the_next_batch_and_remembered_complete(tmp_path, caplog):
    """The batcher reads max_batch per batch: raised while serving, the next batch fills to it. The knee replaces
    the partial record in the export's cache, and /info's curve is the finished one."""
    cache_knees(tmp_path, "cpu", {"image": 2}, {"image": 3.0})  # the warm-up's cut-short knee
    sizes: list[int] = []

    def encode(x: np.ndarray) -> np.ndarray:
        sizes.append(len(x))
        return np.zeros((len(x), 4), dtype=np.float32)

    async def scenario():
        pool = ThreadPoolExecutor(1)
        images = Batcher("image", encode, pool, Metrics(), max_batch=2, max_wait_s=0.5, max_queue=64)
        images.start()
        warm = BatchCurve("image", {1: 10.0, 2: 15.0}, complete=False, cap=2)
        engine = SimpleNamespace(images=images, texts=SimpleNamespace(max_batch=64), curves={"image": warm})
        backend = SimpleNamespace(export_dir=tmp_path, device="cpu")
        with caplog.at_level(logging.INFO, logger="service.batch_refine"):
            adopt(engine, backend, BatchCurve("image", {1: 10.0, 2: 15.0, 4: 25.0, 8: 26.0}, True, 4,
                                              "warm-up+idle"))
        deadline = asyncio.get_running_loop().time() + 30
        await asyncio.gather(*(images.submit([np.zeros(3, dtype=np.float32)], deadline) for _ in range(4)))
        await images.stop()
        pool.shutdown()
        return engine

    engine = run(scenario())
    assert sizes == [4]  # one batch of 4, not two of 2
    assert engine.curves["image"].to_dict() == {"max_batch": 4, "source": "warm-up+idle", "complete": True,
                                                "items_per_s": {"1": 10.0, "2": 15.0, "4": 25.0, "8": 26.0}}
    assert cached_knees(tmp_path, "cpu") == {"image": 4} and cached_partial(tmp_path, "cpu") == set()
    assert "1: 10.0, 2: 15.0, 4: 25.0, 8: 26.0" in caplog.text and "max batch 4, was 2" in caplog.text


def test_only_unfinished_curves_are_probed_and_a_remembered_partial_knee_is_measured_afresh(tmp_path):
    quiet = Quiet()
    clock = Clock(rising, quiet)
    backend = SimpleNamespace(preprocess=SimpleNamespace(size=(8, 8)), encode_image=clock.encode,
                              encode_text=clock.encode, tokenize=lambda texts: np.zeros((len(texts), 4)),
                              export_dir=tmp_path, device="cpu")
    flat = BatchCurve("text", {1: 10.0, 2: 10.1}, complete=False, cap=1)  # cut short, but not rising: decided
    remembered = BatchCurve("image", cap=2, source="cache", complete=False)  # an earlier start's, curve unknown
    engine = SimpleNamespace(images=SimpleNamespace(max_batch=2), texts=SimpleNamespace(max_batch=1),
                             curves={"image": remembered, "text": flat}, idle=quiet.idle, activity=quiet.activity)
    run(finish_probes(engine, backend, {"image": 8, "text": 8}, inline, timer=clock, poll_s=0))
    assert set(clock.calls) == {1, 2, 4, 8}  # the image tower from batch 1, the text tower not at all
    assert engine.curves["text"] is flat and engine.curves["image"].source == "cache+idle"
    assert engine.images.max_batch == engine.curves["image"].cap == 8 and engine.texts.max_batch == 1


def test_an_encoder_error_keeps_the_cap(caplog):
    quiet = Quiet()

    def broken(x: np.ndarray) -> None:
        raise RuntimeError("boom")

    backend = SimpleNamespace(preprocess=SimpleNamespace(size=(8, 8)), encode_image=broken, encode_text=broken,
                              tokenize=lambda texts: np.zeros((len(texts), 4)))
    curve = BatchCurve("image", {1: 10.0}, complete=False, cap=1)
    engine = SimpleNamespace(images=SimpleNamespace(max_batch=1), curves={"image": curve}, idle=quiet.idle,
                             activity=quiet.activity)
    with caplog.at_level(logging.WARNING, logger="service.batch_refine"):
        run(finish_probes(engine, backend, {"image": 8}, inline, poll_s=0))
    assert engine.images.max_batch == 1 and engine.curves["image"] is curve and "boom" in caplog.text


class MeasuredBackend(NamedBackend):
    """The named stand-in, with its max batches left to measurement (as an export backend's are)."""

    measure_batches = True

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:  # the probe's blank images would be named "hold"
        return np.zeros((len(pixels), self.embed_dim), dtype=np.float32)


@pytest.mark.parametrize("end", ["drain", "stop"])
def test_drain_and_stop_end_a_probe_waiting_for_the_engine_to_be_idle(end):
    """The probe finishing after ready stops at drain (a probe call would only delay the requests being finished)
    and at stop, even while it waits for a busy engine."""

    async def scenario():
        lifecycle = Lifecycle(Settings(batch_probe_s=1e-6), Metrics(), MeasuredBackend)
        lifecycle.start()
        await lifecycle.wait_loaded()
        engine = lifecycle.engine
        assert engine is not None and all(unfinished(c) for c in engine.curves.values())  # cut short after batch 1
        refining = lifecycle._refining
        assert refining is not None and not refining.done()
        with engine.images.reserve(1):  # a request in the batchers: the probe waits
            if end == "drain":
                lifecycle.begin_drain()
                await asyncio.wait_for(asyncio.gather(refining, return_exceptions=True), 10)
            else:
                await asyncio.wait_for(lifecycle.stop(), 10)
        assert refining.cancelled()
        await lifecycle.stop()
        return engine

    engine = run(scenario())
    assert (engine.images.max_batch, engine.texts.max_batch) == (1, 1)


def test_a_cpu_export_warms_its_max_batch_after_ready_and_a_gpu_before():
    """ONNX Runtime's first call at a new size costs about two steady ones: warming a knee of 16-64 before ready
    would add seconds to every start on a CPU. Before ready only a tower the probe never ran (its session's set-up);
    the max batch once idle after ready. GPUs and the torch backend keep warming everything before ready."""
    from service.batch_probe import warm_plan

    engine = SimpleNamespace(images=SimpleNamespace(max_batch=16), texts=SimpleNamespace(max_batch=32))
    cpu = SimpleNamespace(measure_batches=True, device="cpu")
    probed = {"image": BatchCurve("image", {1: 5.0, 2: 9.0}, cap=2)}  # text: a remembered knee, never run
    assert warm_plan(engine, probed, cpu) == ((0, 1), {"image": 16, "text": 32})
    assert warm_plan(engine, probed, SimpleNamespace(measure_batches=True, device="cuda")) == ((16, 32), {})
    assert warm_plan(engine, probed, SimpleNamespace(measure_batches=False, device="cpu")) == ((16, 32), {})
    ran_cap = {"image": BatchCurve("image", {1: 5.0, 16: 9.0}, cap=16)}
    assert warm_plan(engine, ran_cap, cpu) == ((0, 1), {"text": 32})  # the probe ran 16 already


def test_warming_up_after_ready_waits_until_the_engine_is_idle():
    from service.batch_refine import warm_when_idle

    quiet = Quiet()
    clock = Clock(lambda n: 0.1, quiet)
    backend = SimpleNamespace(preprocess=SimpleNamespace(size=(8, 8)), encode_image=clock.encode,
                              encode_text=clock.encode, tokenize=lambda texts: np.zeros((len(texts), 4)))
    engine = SimpleNamespace(idle=quiet.idle, activity=quiet.activity)

    async def scenario():
        quiet.arrive()  # a request is in the batchers
        task = asyncio.ensure_future(warm_when_idle(engine, backend, {"image": 16, "text": 32},
                                                    run=lambda fn, *a: asyncio.sleep(0, fn(*a)), poll_s=0.001))
        await asyncio.sleep(0.05)
        assert clock.calls == []  # nothing while busy
        quiet.depth = 0
        await asyncio.wait_for(task, 5)

    run(scenario())
    assert clock.calls == [16, 32] and clock.busy_calls == 0
