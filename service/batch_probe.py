"""Batch size caps from measurement: time an encoder at batch 1, 2, 4, ... up to its limit and take the knee
(export/batch_knee.py).

A constant tuned on one machine is wrong on the next: ONNX Runtime's ViT-B-32 image tower peaked at batch 8 on one
2-core machine and kept gaining to 32 on another (22 / 27.6 / 30.0 / 31.0 img/s at 1 / 8 / 16 / 32). The knee, the
smallest batch within KNEE_SHARE of the best throughput, keeps nearly all of the throughput at the lowest latency a
batch costs. Measured at warm-up within CLIP_BATCH_PROBE_S (both towers together); a curve that budget cut short while
still rising is finished after ready, in the engine's idle time (service/batch_refine.py). CLIP_{IMAGE,TEXT}_MAX_BATCH
set explicitly win.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from export.batch_knee import KNEE_SHARE, cache_knees, knee

log = logging.getLogger("service.batch_probe")

CALLS = 3  # timed calls per size after its first (the first call of a new shape pays allocations); the fastest counts
# A real encoder does not lose half its items/s when the batch doubles (its call would take 4x as long): a size that
# measures like that was disturbed (other processes, a GC pause), and is timed again up to RETRIES times
DROP_SHARE, RETRIES = 0.5, 2

Timer = Callable[[], float]


@dataclass
class BatchCurve:
    """Items/s per batch size of one tower, and the cap taken from it."""

    modality: str
    items_per_s: dict[int, float] = field(default_factory=dict)  # batch size -> best items/s measured
    complete: bool = True  # False when the time budget ran out before the largest size
    cap: Optional[int] = None
    # "warm-up"; "manifest" or "cache": recorded for this host by `export bench --record` or an earlier probe; with
    # "+idle" (service/batch_refine.py): finished while the server was idle after ready
    source: str = "warm-up"

    def to_dict(self) -> dict:
        return {"max_batch": self.cap, "source": self.source, "complete": self.complete,
                "items_per_s": {str(n): round(r, 1) for n, r in self.items_per_s.items()}}

    @classmethod
    def from_dict(cls, modality: str, d: dict) -> "BatchCurve":
        """A curve as `to_dict` wrote it (an engine process's, read by a front-end for /info)."""
        return cls(modality, {int(n): r for n, r in d["items_per_s"].items()}, d["complete"], d["max_batch"],
                   d["source"])


def sizes_up_to(limit: int) -> list[int]:
    """1, 2, 4, ... below `limit`, then `limit` itself."""
    out, n = [], 1
    while n < limit:
        out.append(n)
        n *= 2
    return out + [limit]


def measure(modality: str, make: Callable[[int], np.ndarray], encode: Callable[[np.ndarray], object], limit: int,
            budget_s: float, timer: Timer = time.perf_counter, calls: int = CALLS) -> BatchCurve:
    """Time `encode(make(n))` (one encoder call on a batch of n, its input made beforehand) for n in
    sizes_up_to(limit), smallest first, and take the knee. A size whose estimated cost (from the last size's time per
    item) would overrun `budget_s` (counted from the end of the encoder's first call) is not run: the curve is then
    incomplete, and the cap the knee of the sizes that were (so the probe has run the encoder at the cap, and warm-up
    need not)."""
    curve = BatchCurve(modality)
    start: Optional[float] = None
    per_item = 0.0
    for n in sizes_up_to(limit):
        if start is not None and timer() - start + per_item * n * (calls + 1) > budget_s:
            curve.complete = False
            break
        x = make(n)
        encode(x)  # a new shape's first call: allocations, not steady state
        # the clock starts after the encoder's very first call: that one is the runtime's lazy set-up (ORT: up to a
        # second on ViT-B-32 on a busy 2-core machine), a cost of starting at all, not of trying batch sizes
        start = timer() if start is None else start
        rate = 0.0
        for _ in range(1 + RETRIES):
            rate = max(rate, n / max(_fastest(encode, x, calls, timer), 1e-9))
            if plausible(rate, curve.items_per_s):
                break
        curve.items_per_s[n] = rate
        per_item = 1 / rate
    # cut short while still gaining, the knee is the largest size measured, not the limit: a size's first call costs
    # ORT about twice a steady one (ViT-B-32, CPU), so serving an unmeasured size means warming it up too, which the
    # budget was meant to bound; and nothing measured says the larger batch's latency buys anything
    curve.cap = knee(curve.items_per_s)
    return curve


def plausible(rate: float, rates: dict[int, float]) -> bool:
    """Whether a size's measured rate can stand: not below DROP_SHARE of the best so far (such a size was disturbed,
    and is timed again up to RETRIES times)."""
    return not rates or rate >= DROP_SHARE * max(rates.values())


def still_rising(curve: BatchCurve) -> bool:
    """The budget stopped the probe while the largest size measured was still the fastest."""
    return not curve.complete and bool(curve.items_per_s) and curve.cap == max(curve.items_per_s)


def _fastest(encode: Callable[[np.ndarray], object], x: np.ndarray, calls: int, timer: Timer) -> float:
    best = float("inf")
    for _ in range(calls):
        t0 = timer()
        encode(x)
        best = min(best, timer() - t0)
    return best


def probe_backend(backend, limits: dict[str, int], budget_s: float, timer: Timer = time.perf_counter
                  ) -> dict[str, BatchCurve]:
    """A curve and cap per tower in `limits` (modality -> largest batch allowed): the knee the export recorded for
    this host when it has one, else timed on the backend's encoders."""
    curves = {}
    for modality, cap in getattr(backend, "recorded_max_batch", {}).items():
        if modality in limits:
            source = getattr(backend, "recorded_source", "manifest")  # or "cache": an earlier start's probe
            complete = modality not in getattr(backend, "recorded_partial", set())
            curves[modality] = BatchCurve(modality, cap=min(cap, limits[modality]), source=source, complete=complete)
            log.info("%s max batch %d: the knee recorded for this host (%s: %d), within %d",
                     modality, curves[modality].cap, source, cap, limits[modality])
    todo = [m for m in limits if m not in curves]
    per_tower = budget_s / max(1, len(todo))  # the budget is the whole probe's: it delays readiness
    inputs = towers(backend)
    for modality in todo:
        curve = curves[modality] = measure(modality, *inputs[modality], limits[modality], per_tower, timer)
        log.info("%s encoder items/s by batch size: %s%s -> max batch %d (the smallest within %.0f%% of the best)",
                 modality, ", ".join(f"{n}: {r:.1f}" for n, r in curve.items_per_s.items()),
                 "" if curve.complete else f" (stopped by CLIP_BATCH_PROBE_S={budget_s:g})", curve.cap,
                 100 * KNEE_SHARE)
        if still_rising(curve):
            log.warning("%s encoder: CLIP_BATCH_PROBE_S=%g ran out while batch %d was still the fastest; serving at "
                        "max batch %d until the larger sizes are measured while the server is idle after ready "
                        "(service/batch_refine.py). A larger CLIP_BATCH_PROBE_S, or `python -m export bench <export "
                        "dir> --backends onnx --record` on this host, measures them before ready", modality, budget_s,
                        curve.cap, curve.cap)
    remember(backend, {m: c for m, c in curves.items() if m in todo}, budget_s)
    return curves


def towers(backend) -> dict[str, tuple[Callable[[int], np.ndarray], Callable[[np.ndarray], object]]]:
    """Per tower, a batch of n inputs (made beforehand, so only the encoder is timed) and the encoder to time."""
    h, w = backend.preprocess.size
    return {"image": (lambda n: np.zeros((n, 3, h, w), dtype=np.float32), backend.encode_image),  # [n, 3, H, W]
            "text": (lambda n: backend.tokenize(["a photo of a red circle"] * n), backend.encode_text)}  # [n, L]


def warm_plan(engine, curves: dict[str, BatchCurve], backend) -> tuple[tuple[int, int], dict[str, int]]:
    """(image, text) sizes to warm up before ready, and tower -> size to warm up in idle time after it.

    Export backends on a CPU leave their max batch to idle time: ONNX Runtime's first call at a new size costs about
    twice a steady one (ViT-B-32 on 2 cores: batch 32, 5.2 s against 2.9), so warming a measured knee of 16-64 before
    ready would add seconds to every start; before ready they only run a tower the probe never ran (its first call
    sets the session up). GPUs keep the whole warm-up before ready: a batch there costs milliseconds, and a cold path
    (a TensorRT profile, cuDNN's choice of kernels) is what warm-up is for. So does the torch backend on a CPU."""
    sizes = unwarmed(engine, curves)
    if not getattr(backend, "measure_batches", False) or backend.device != "cpu":
        return sizes, {}
    now = tuple(1 if n and not curves.get(m, BatchCurve(m)).items_per_s else 0
                for m, n in zip(("image", "text"), sizes))
    later = {m: n for m, n in zip(("image", "text"), sizes) if n > 1}
    return now, later  # type: ignore[return-value]


def unwarmed(engine, curves: dict[str, BatchCurve]) -> tuple[int, int]:
    """The image and text batch sizes warm-up still has to run: each tower's max batch, or 0 where the probe already
    ran the encoder at that size (warming it again would only add its time to the start)."""
    return tuple(0 if batcher.max_batch in curves.get(m, BatchCurve(m)).items_per_s else batcher.max_batch
                 for m, batcher in (("image", engine.images), ("text", engine.texts)))  # type: ignore[return-value]


def remember(backend, measured: dict[str, BatchCurve], budget_s: float) -> None:
    """Keep the knees in an export's cache, so a restart on this host skips the probe; a curve the budget cut short
    is kept with that budget (a later start with a larger CLIP_BATCH_PROBE_S measures again)."""
    knees = {m: c.cap for m, c in measured.items() if c.cap}
    partial = {m: budget_s for m, c in measured.items() if c.cap and not c.complete}
    export_dir = getattr(backend, "export_dir", None)
    if knees and export_dir is not None:
        cache_knees(export_dir, backend.device, knees, partial)
