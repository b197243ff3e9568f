"""Max batch sizes from measurement (service/batch_probe.py): the knee of a timing curve the test controls through an
injected clock, the time budget, disturbed measurements, and which setting wins."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from service.batch_probe import BatchCurve, knee, measure, probe_backend, sizes_up_to
from service.engine import max_batch, unset_limits
from service.settings import Settings


class Clock:
    """A fake timer: encoder calls advance it by cost(n) seconds, and nothing else does."""

    def __init__(self, cost):
        self.now, self.cost, self.calls = 0.0, cost, []

    def __call__(self) -> float:
        return self.now

    def encode(self, x: np.ndarray) -> None:
        self.calls.append(len(x))
        self.now += self.cost(len(x), len(self.calls))


def make(n: int) -> np.ndarray:
    return np.zeros((n, 1), dtype=np.float32)


def test_sizes_are_powers_of_two_then_the_limit():
    assert sizes_up_to(32) == [1, 2, 4, 8, 16, 32]
    assert sizes_up_to(24) == [1, 2, 4, 8, 16, 24] and sizes_up_to(1) == [1]


def test_knee_is_the_smallest_batch_within_95_percent_of_the_best():
    # ONNX Runtime's ViT-B-32 image tower on the 2-core machine: 16 is the knee, not 8, not 32
    assert knee({1: 22.0, 8: 27.6, 16: 30.0, 32: 31.0}) == 16
    assert knee({1: 100.0, 2: 180.0, 4: 200.0, 8: 150.0}) == 4  # larger batches that get slower never win
    assert knee({1: 50.0}) == 1


def test_measured_curve_follows_the_encoder_and_picks_its_knee():
    # 1 ms per call + 1 ms per item up to 8 items, then 1.1 ms per item: items/s flattens at 8
    clock = Clock(lambda n, _: 0.001 + 0.001 * min(n, 8) + 0.0011 * max(0, n - 8))
    curve = measure("image", make, clock.encode, 32, budget_s=10.0, timer=clock)
    assert list(curve.items_per_s) == [1, 2, 4, 8, 16, 32] and curve.complete
    assert curve.items_per_s[1] == pytest.approx(500.0) and curve.items_per_s[8] == pytest.approx(8 / 0.009)
    assert curve.cap == 8


def test_a_curve_crosses_to_a_front_end_unchanged():
    """An engine process sends its curves as to_dict() (service/engine_server.py); a front-end's /info shows them."""
    clock = Clock(lambda n, _: 0.001 + 0.001 * n)
    curve = measure("text", make, clock.encode, 8, budget_s=0.05, timer=clock)
    assert not curve.complete and curve.items_per_s  # an incomplete one, to carry every field
    sent = curve.to_dict()
    back = BatchCurve.from_dict("text", sent)
    assert back.to_dict() == sent and back.cap == curve.cap and back.modality == "text"
    assert BatchCurve.from_dict("image", BatchCurve("image", cap=4, source="cache").to_dict()).source == "cache"


def test_a_fixed_cost_per_call_makes_the_largest_batch_the_knee():
    clock = Clock(lambda n, _: 0.002 + 0.00002 * n)  # the stand-in's default timing: gains all the way
    assert measure("image", make, clock.encode, 32, budget_s=10.0, timer=clock).cap == 32


def test_the_budget_stops_the_probe_and_an_unfinished_rise_serves_the_largest_size_measured(caplog):
    clock = Clock(lambda n, _: 0.1 + 0.01 * n)  # still gaining at every size; each size costs 4 calls
    curve = measure("image", make, clock.encode, 64, budget_s=2.0, timer=clock)
    assert not curve.complete and max(curve.items_per_s) < 64
    assert clock.now <= 2.0 + 1e-9  # no size started whose estimated time would overrun the budget
    # not the limit: a size never run would have to be warmed up (ORT's first call at a new size costs about two)
    assert curve.cap == max(curve.items_per_s) == 4
    backend = SimpleNamespace(preprocess=SimpleNamespace(size=(8, 8)), encode_image=clock.encode,
                              encode_text=clock.encode, tokenize=lambda texts: np.zeros((len(texts), 4)))
    with caplog.at_level("WARNING", logger="service.batch_probe"):
        probe_backend(backend, {"image": 64}, budget_s=2.0, timer=clock)
    assert "export bench" in caplog.text and "CLIP_BATCH_PROBE_S" in caplog.text  # the user is told how to measure


def test_the_budget_stops_the_probe_but_a_flat_curve_is_still_capped():
    clock = Clock(lambda n, _: 0.1 * n)  # no gain from batching at all
    curve = measure("image", make, clock.encode, 64, budget_s=3.0, timer=clock)
    assert not curve.complete and curve.cap == 1


def test_a_disturbed_size_is_timed_again():
    # the first 4 calls at batch 4 (its warm-up and 3 timed calls) are 10x slow, as if another process had the cores
    def cost(n: int, call: int) -> float:
        slow = n == 4 and clock.calls.count(4) <= 4
        return 0.001 * n * (10 if slow else 1) / min(n, 4)

    clock = Clock(cost)
    curve = measure("image", make, clock.encode, 8, budget_s=10.0, timer=clock)
    assert clock.calls.count(4) > 4 and curve.items_per_s[4] == pytest.approx(4 / 0.001)
    assert curve.cap == 4


def test_probe_backend_times_both_towers_with_inputs_of_each_size():
    seen: dict[str, list] = {"image": [], "text": []}
    backend = SimpleNamespace(preprocess=SimpleNamespace(size=(8, 8)),
                              encode_image=lambda x: seen["image"].append(x.shape),
                              encode_text=lambda t: seen["text"].append(t.shape),
                              tokenize=lambda texts: np.zeros((len(texts), 4), dtype=np.int64))
    ticks = iter(range(10_000))
    curves = probe_backend(backend, {"image": 4, "text": 2}, budget_s=1e9, timer=lambda: next(ticks))
    assert set(curves) == {"image", "text"}
    assert {s for s in seen["image"]} == {(1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8)}
    assert {s for s in seen["text"]} == {(1, 4), (2, 4)}


def test_explicit_settings_win_over_the_measurement(monkeypatch):
    backend = SimpleNamespace(name="onnx", device="cpu", max_batch=None, measure_batches=True)
    for name in ("CLIP_IMAGE_MAX_BATCH", "CLIP_TEXT_MAX_BATCH", "CLIP_BATCH_PROBE_S"):
        monkeypatch.delenv(name, raising=False)
    s = Settings()
    assert unset_limits(s, backend) == {"image": 32, "text": 64}
    assert max_batch(s, backend, "image", measured=16) == 16
    assert max_batch(s, backend, "image") == 32  # nothing measured: the setting's default
    monkeypatch.setenv("CLIP_IMAGE_MAX_BATCH", "12")
    s = Settings()
    assert unset_limits(s, backend) == {"text": 64}
    assert max_batch(s, backend, "image", measured=16) == 12
    assert max_batch(s, SimpleNamespace(**{**vars(backend), "max_batch": 8}), "text", measured=32) == 8  # engine
    assert unset_limits(Settings(batch_probe_s=0), backend) == {}  # turned off
    assert unset_limits(s, SimpleNamespace(**{**vars(backend), "measure_batches": False})) == {}  # test doubles


def test_a_knee_recorded_for_this_host_replaces_the_probe_and_another_hosts_does_not(monkeypatch):
    from export.batch_knee import host_id, recorded_knees

    record = {"host": host_id("cpu"), "image": {"max_batch": 8}, "text": {"max_batch": 2}}
    manifest = SimpleNamespace(batch_knees={"cpu": record})
    assert recorded_knees(manifest, "cpu") == {"image": 8, "text": 2}
    assert recorded_knees(manifest, "cuda") == {}
    assert recorded_knees(SimpleNamespace(batch_knees={"cpu": {**record, "host": "another CPU x64"}}), "cpu") == {}

    called = []
    backend = SimpleNamespace(preprocess=SimpleNamespace(size=(8, 8)), recorded_max_batch={"image": 8, "text": 128},
                              encode_image=called.append, encode_text=called.append,
                              tokenize=lambda texts: np.zeros((len(texts), 4), dtype=np.int64))
    curves = probe_backend(backend, {"image": 32, "text": 64}, budget_s=10.0)
    assert called == [] and {m: (c.cap, c.source) for m, c in curves.items()} == {
        "image": (8, "manifest"), "text": (64, "manifest")}  # within the setting's limit
    curves = probe_backend(backend, {"text": 64}, budget_s=10.0)  # image set explicitly: nothing for it
    assert set(curves) == {"text"}


def test_the_budget_covers_both_towers_together():
    clock = Clock(lambda n, _: 0.1 * n)  # 0.1 s per item: the probe would take minutes unbounded
    backend = SimpleNamespace(preprocess=SimpleNamespace(size=(8, 8)), encode_image=clock.encode,
                              encode_text=clock.encode, tokenize=lambda texts: np.zeros((len(texts), 4)))
    curves = probe_backend(backend, {"image": 32, "text": 64}, budget_s=3.0, timer=clock)
    assert set(curves) == {"image", "text"} and not any(c.complete for c in curves.values())
    assert clock.now <= 3.0 + 1e-9  # readiness waits for the whole probe: the budget bounds it, not each tower


def test_a_probe_its_budget_cut_short_is_remembered_until_a_larger_budget(tmp_path):
    """A start whose probe ran out of CLIP_BATCH_PROBE_S still served with the knee it found: the next start on this
    host uses it (no probe, and no second wait for readiness); a start given more time measures further."""
    from export.batch_knee import cached_knees, cached_partial

    clock = Clock(lambda n, _: 0.1 * n)
    backend = SimpleNamespace(preprocess=SimpleNamespace(size=(8, 8)), encode_image=clock.encode,
                              encode_text=clock.encode, tokenize=lambda texts: np.zeros((len(texts), 4)),
                              export_dir=tmp_path, device="cpu")
    curves = probe_backend(backend, {"image": 32, "text": 64}, budget_s=3.0, timer=clock)
    assert not any(c.complete for c in curves.values())
    caps = {m: c.cap for m, c in curves.items()}
    assert cached_knees(tmp_path, "cpu", budget_s=3.0) == caps
    assert cached_partial(tmp_path, "cpu") == {"image", "text"}
    assert cached_knees(tmp_path, "cpu", budget_s=30.0) == {}  # more time now: measure again

    remembered = SimpleNamespace(**{**vars(backend), "recorded_max_batch": caps, "recorded_source": "cache",
                                    "recorded_partial": {"image", "text"}})
    calls = len(clock.calls)
    again = probe_backend(remembered, {"image": 32, "text": 64}, budget_s=3.0, timer=clock)
    assert len(clock.calls) == calls  # no encoder call
    assert {m: (c.cap, c.source, c.complete) for m, c in again.items()} == {
        m: (cap, "cache", False) for m, cap in caps.items()}

    fast = Clock(lambda n, _: 0.001)  # a complete probe of one tower replaces that tower's partial record
    backend_fast = SimpleNamespace(**{**vars(backend), "encode_text": fast.encode})
    probe_backend(backend_fast, {"text": 64}, budget_s=30.0, timer=fast)
    assert cached_partial(tmp_path, "cpu") == {"image"}
    assert cached_knees(tmp_path, "cpu", budget_s=30.0) == {"text": 64}


def test_warm_up_skips_a_size_the_probe_already_ran():
    from service.batch_probe import BatchCurve, unwarmed

    engine = SimpleNamespace(images=SimpleNamespace(max_batch=8), texts=SimpleNamespace(max_batch=64))
    curves = {"image": BatchCurve("image", items_per_s={1: 1.0, 2: 2.0, 4: 3.0, 8: 3.1})}
    assert unwarmed(engine, curves) == (0, 64)  # the text tower was not probed (set explicitly, or recorded)
    assert unwarmed(engine, {}) == (8, 64)


def test_the_encoders_first_call_is_start_up_not_the_probes_budget():
    """ORT's first run of a session sets itself up (about a second for ViT-B-32 on a busy 2-core machine): counted
    against the budget, it left time for batch 1 alone, and a server stuck at max batch 1 on that host."""
    clock = Clock(lambda n, i: 5.0 if i == 1 else 0.01 + 0.001 * n)  # the very first call takes 5 s
    curve = measure("image", make, clock.encode, 32, budget_s=2.0, timer=clock)
    assert curve.complete and max(curve.items_per_s) == 32, curve
