"""Finishing, after ready, a warm-up probe (service/batch_probe.py) that CLIP_BATCH_PROBE_S cut short while the
largest size it reached was still the fastest, in the engine's idle time.

On a slow host the budget measures only the smallest sizes (ViT-B-32 on 2 busy cores: 3 s reached batch 2 of a curve
that keeps rising to 32, 21 -> 31 items/s), and the server would serve at that size for good, 20-30% below what the
host can do. Idle time is free: each remaining size is timed as `measure` times it (a first call untimed, CALLS
timed calls, the fastest counts, DROP_SHARE retries), one encoder call at a time on the inference thread, and only
while both batchers are idle, so a request waits at most for one probe call. A size during whose timed calls a
request came in is timed again later: the request's decoding competes for the cores, and a slow time would move the
knee. Then the tower serves at the knee of the whole curve, which the export's cache remembers as complete.

Every size is measured, not stopping at the first that gains less than the knee share: a curve can flatten for a
step and rise again (27 / 28 / 31 items/s at 4 / 8 / 16), and stopping there would pick a different knee than the
complete probe or `export bench --record` would. The largest call costs what a full batch costs anyway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Optional, Protocol

import numpy as np

from export.batch_knee import KNEE_SHARE, knee
from service.batch_probe import (CALLS, RETRIES, BatchCurve, Timer, plausible, remember, sizes_up_to, still_rising,
                                 towers)

log = logging.getLogger("service.batch_refine")

POLL_S = 0.05  # how often a waiting probe looks whether the engine is idle again
IDLE = "+idle"  # appended to a curve's source once finished after ready: "warm-up+idle", "cache+idle"

Run = Callable[..., Awaitable[Any]]  # run(fn, *args): fn(*args) on the inference thread, awaited


class Quiet(Protocol):
    """What the probe watches (service/engine.py Engine): whether any request is in the batchers, and a count that
    changes whenever one comes."""

    def idle(self) -> bool: ...

    def activity(self) -> int: ...


def unfinished(curve: BatchCurve) -> bool:
    """A curve worth finishing: cut short while still rising, or a cut-short knee remembered by an earlier start (its
    curve unknown: measured again from batch 1, the remembered cap served meanwhile)."""
    return still_rising(curve) or (not curve.complete and not curve.items_per_s)


async def finish(curve: BatchCurve, make: Callable[[int], np.ndarray], encode: Callable[[np.ndarray], object],
                 limit: int, run: Run, quiet: Quiet, timer: Timer = time.perf_counter, poll_s: float = POLL_S,
                 calls: int = CALLS) -> BatchCurve:
    """The curve completed with the sizes of sizes_up_to(limit) it lacks, timed only while `quiet` is idle, and its
    knee. Runs until done: cancel it to stop."""
    rates = dict(curve.items_per_s)
    for n in sizes_up_to(limit):
        if n in rates:
            continue
        x = make(n)
        await _settle(quiet, poll_s)
        await run(encode, x)  # a new shape's first call: allocations, not steady state
        rate = 0.0
        for _ in range(1 + RETRIES):
            rate = max(rate, n / max(await _undisturbed(encode, x, run, quiet, timer, poll_s, calls), 1e-9))
            if plausible(rate, rates):
                break
        rates[n] = rate
    return BatchCurve(curve.modality, rates, True, knee(rates), curve.source + IDLE)


async def _undisturbed(encode: Callable[[np.ndarray], object], x: np.ndarray, run: Run, quiet: Quiet, timer: Timer,
                       poll_s: float, calls: int) -> float:
    """The fastest of `calls` timed calls before which no request came; timed again (after the engine settles) as
    often as one does. (A request reserves its room before it decodes, so one that comes during the last call can
    slow that call alone, and the fastest call does not count it.)"""
    while True:
        mark, best = quiet.activity(), float("inf")
        for _ in range(calls):
            if not quiet.idle() or quiet.activity() != mark:
                break
            best = min(best, await run(_timed, encode, x, timer))
        else:
            return best
        await _settle(quiet, poll_s)


def _timed(encode: Callable[[np.ndarray], object], x: np.ndarray, timer: Timer) -> float:
    """One encoder call's seconds, timed on the thread that runs it (not the loop's hand-off)."""
    t0 = timer()
    encode(x)
    return timer() - t0


async def _settle(quiet: Quiet, poll_s: float) -> None:
    """Return once the engine has been idle, with no request coming, for one poll interval."""
    while True:
        mark = quiet.activity()
        await asyncio.sleep(poll_s)
        if quiet.idle() and quiet.activity() == mark:
            return


async def finish_probes(engine: Any, backend: Any, limits: dict[str, int], run: Run,
                        timer: Timer = time.perf_counter, poll_s: float = POLL_S) -> None:
    """Finish every unfinished curve of `engine` (towers in `limits`: those measured, with the largest batch allowed)
    and serve each at its new knee. An encoder error stops the probe and keeps the cap served (the batcher reports
    a broken encoder on its own)."""
    inputs = towers(backend)
    for modality, curve in list(engine.curves.items()):
        if modality not in limits or not unfinished(curve):
            continue
        try:
            done = await finish(curve, *inputs[modality], limits[modality], run, engine, timer, poll_s)
        except Exception as exc:  # noqa: BLE001 - a probe after ready must never take the server down
            log.warning("%s encoder: finishing the batch size probe failed, keeping max batch %d: %r", modality,
                        curve.cap or 0, exc)
            return
        adopt(engine, backend, done)


def adopt(engine: Any, backend: Any, curve: BatchCurve) -> None:
    """Serve `curve`'s tower at its knee from the next batch on (the batcher reads max_batch per batch), show the
    curve in /info, and remember the knee, complete, for this host."""
    batcher = engine.images if curve.modality == "image" else engine.texts
    was, batcher.max_batch = batcher.max_batch, curve.cap
    engine.curves = {**engine.curves, curve.modality: curve}
    remember(backend, {curve.modality: curve}, budget_s=0.0)
    log.info("%s encoder items/s by batch size: %s (finished while idle after ready) -> max batch %d, was %d (the "
             "smallest within %.0f%% of the best)", curve.modality,
             ", ".join(f"{n}: {r:.1f}" for n, r in curve.items_per_s.items()), curve.cap, was, 100 * KNEE_SHARE)


async def warm_when_idle(engine: Any, backend: Any, sizes: dict[str, int], run: Run, poll_s: float = POLL_S) -> None:
    """One encoder call per tower at the batch size in `sizes` (its max batch, which start-up did not run), each
    once the engine is idle: a batch that comes first pays its own first call instead, which is all warm-up saves."""
    inputs = towers(backend)
    for modality, n in sizes.items():
        make, encode = inputs[modality]
        x = make(n)
        await _settle(engine, poll_s)
        await run(encode, x)
        log.info("%s encoder warmed up at max batch %d while idle after ready", modality, n)


def start(engine: Any, backend: Any, limits: dict[str, int], run: Run,
          warm: Optional[dict[str, int]] = None) -> Optional[asyncio.Task]:
    """The background task that warms up the max batch sizes in `warm` (tower -> size) and finishes the engine's
    unfinished curves (whose probe runs every size anyway), or None when there is nothing to do."""
    refine = {m for m, c in engine.curves.items() if m in limits and unfinished(c)}
    warm = {m: n for m, n in (warm or {}).items() if n and m not in refine}
    if not refine and not warm:
        return None

    async def after_ready() -> None:
        try:
            await warm_when_idle(engine, backend, warm, run)
        except Exception as exc:  # noqa: BLE001 - never takes the server down; a broken encoder shows in batches
            log.warning("warming up after ready failed: %r", exc)
        if refine:
            await finish_probes(engine, backend, limits, run)

    return asyncio.get_running_loop().create_task(after_ready(), name="batch-refine")
