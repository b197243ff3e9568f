"""`python -m bench.feed` (issue 16's feeding benchmark) with a tiny budget: it runs, against this checkout and a
git worktree baseline, and its numbers are positive and consistent with each other."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bench.standin import StandInBackend, StandInTiming, load_standin

ROOT = Path(__file__).resolve().parents[2]


def test_standin_waits_its_time_per_batch_and_returns_unit_vectors(monkeypatch):
    # a fake sleep that records each wait and then lets time.perf_counter jump past the deadline
    now = [0.0]
    monkeypatch.setattr("bench.standin.time.perf_counter", lambda: now[0])
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    b = StandInBackend(StandInTiming(batch_ms=2.0, item_ms=0.5), sleep=sleep)
    pixels = np.random.default_rng(0).standard_normal((8, 3, *b.preprocess.size)).astype(np.float32)
    out = b.encode_image(pixels)
    assert slept == [pytest.approx((2.0 + 8 * 0.5) / 1000)]
    assert out.shape == (8, b.embed_dim) and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-6)
    assert np.array_equal(out, b.encode_image(pixels))  # deterministic
    assert b.embed_dim == 128 and "stand-in" in b.model_id and b.fingerprint.startswith("standin")


def test_standin_normalises_on_its_device_as_a_cuda_engine_does(monkeypatch):
    """An engine process hands the stand-in a batch's uint8 images (encode_pixels, as eager PyTorch on CUDA takes
    them: a list, or an array): each is copied once, into its upload buffer, it waits its time, and the vectors are those encode_image gives
    the CPU-normalised pixels. With BENCH_STANDIN_NORMALISE=cpu the engine normalises and calls encode_image."""
    from models.preprocess import normalise
    from service.engine_server import install_pixel_encoder, pixel_encoder

    b = StandInBackend(StandInTiming(batch_ms=0.0, item_ms=0.0), image_size=32)
    batch = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    out = b.encode_pixels(batch)
    assert np.array_equal(out, b.encode_image(normalise(batch, b.preprocess)))
    assert np.array_equal(b._upload[:5], batch)  # the copy a pinned upload would make
    b._upload[:] = 0
    assert np.array_equal(b.encode_pixels(list(batch)), out)  # the items as the batcher hands them over
    assert np.array_equal(b._upload[:5], batch)
    assert len({tuple(v) for v in out}) > 1  # different pixels, different vectors
    engine = type("E", (), {"backend": b})()
    assert pixel_encoder(engine) == (b.encode_pixels, True)  # normalised on the "device", two batches in flight
    engine.images = SimpleNamespace(encode=None, encode_items=None, in_flight=1)
    install_pixel_encoder(engine)  # handed the batch's items, not np.stack's copy of them: one copy, into its buffer
    assert engine.images.encode_items == b.encode_pixels and engine.images.encode is None
    assert engine.images.in_flight == 2

    monkeypatch.setenv("BENCH_STANDIN_NORMALISE", "cpu")
    cpu = load_standin(None)
    assert cpu.encode_pixels is None
    encode, on_device = pixel_encoder(type("E", (), {"backend": cpu})())
    assert not on_device and np.array_equal(encode(batch), out)  # CPU normalise: the same vectors
    with pytest.raises(ValueError, match="device or cpu"):
        StandInBackend(normalise_on="gpu")


def test_standin_factory_takes_its_timing_from_the_environment(monkeypatch):
    monkeypatch.setenv("BENCH_STANDIN_BATCH_MS", "5")
    monkeypatch.setenv("BENCH_STANDIN_ITEM_MS", "0.1")
    monkeypatch.setenv("BENCH_STANDIN_IMAGE_SIZE", "224")
    b = load_standin(None)
    assert (b.timing.batch_ms, b.timing.item_ms, b.preprocess.size) == (5.0, 0.1, (224, 224))
    assert "5ms+0.1ms/item,224px" in b.model_id


def test_another_checkouts_packages_are_served_with_this_checkouts_bench(tmp_path):
    from bench.standin_server import packages_of

    checkout = tmp_path / "checkout"
    for name in ("service", "models", "export", "bench"):
        (checkout / name).mkdir(parents=True)
        (checkout / name / "__init__.py").write_text("")
    (checkout / "docs").mkdir()  # not a package
    folder = Path(packages_of(str(checkout), under=str(tmp_path)))
    assert sorted(p.name for p in folder.iterdir()) == ["export", "models", "service"]
    assert (folder / "service").resolve() == (checkout / "service").resolve()
    assert packages_of(str(checkout), under=str(tmp_path)) == str(folder)  # one folder per checkout, reused


@pytest.mark.parametrize("size", [None, 224])
def test_decode_limit_decodes_the_pixels_the_server_would(size):
    from bench.assets import photo_jpegs
    from bench.decode import decode_limit, to_uint8
    from service.images import ImagePreprocessor

    pre = StandInBackend(image_size=size).preprocess
    jpeg = photo_jpegs(224, 224)[1]
    rgb = to_uint8(jpeg, pre)  # [H, W, 3] uint8
    assert rgb.dtype == np.uint8 and rgb.shape == (*pre.size, 3)
    mean, std = (np.asarray(v, dtype=np.float32).reshape(3, 1, 1) for v in (pre.mean, pre.std))
    served = ImagePreprocessor(pre, max_pixels=40_000_000)(jpeg)  # float32 [3, H, W], what the server encodes
    np.testing.assert_allclose((rgb.transpose(2, 0, 1) / np.float32(255) - mean) / std, served, atol=1e-5)
    limit = decode_limit(jpeg, pre, seconds=0.2, processes=1)
    assert limit["images_per_s"] > 0 and limit["input_size"] == list(pre.size)


@pytest.mark.slow  # 22-34 s on the shared 2-core machine
@pytest.mark.skipif(not shutil.which("wrk"), reason="wrk is not installed (make system-deps installs it as root)")
def test_feed_runs_and_its_numbers_agree(tmp_path):
    run = subprocess.run([sys.executable, "-m", "bench.feed", "--seconds", "1", "--rounds", "1",
                          "--baseline-ref", "HEAD", "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads((tmp_path / "feed.json").read_text())
    limit = results["decode_limit"]
    assert limit["images_per_s"] > 0 and limit["cpu_images_per_s"] > 0 and limit["processes"] >= 1
    assert limit["cpu_images_per_s"] == pytest.approx(limit["processes"] * 1000 / limit["cpu_ms_per_image"], rel=0.01)

    servers = list(results["servers"])
    assert servers == ["baseline HEAD", "this checkout"]
    for label in servers:
        info = results["servers"][label]["info"]
        assert info["backend"] == "standin" and info["fingerprint"].startswith("standin")
    assert results["servers"]["baseline HEAD"]["env"]["BENCH_SERVICE_ROOT"] != str(ROOT)

    by = {(p["server"], p["images_per_request"]): p for p in results["points"]}
    assert set(by) == {(s, k) for s in servers for k in (1, 16)}
    for (server, k), p in by.items():
        assert p["requests"] > 0 and p["images_per_s"] > 0 and p["non_2xx"] == 0, p
        assert p["server_cpu_ms_per_image"] > 0 and p["p50_ms"] > 0, p
        assert p["images"] == p["requests"] * k
        # the server encoded every image wrk counted, and at most the requests still in flight when wrk stopped:
        # a 16-image request really carries 16 images to the encoder
        assert p["images"] <= p["images_encoded"] <= (p["requests"] + p["connections"]) * k, p
    assert (tmp_path / "feed.png").stat().st_size > 0
    assert "decode_limit" in (tmp_path / "feed.md").read_text()
