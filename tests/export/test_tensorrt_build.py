"""The TensorRT build code path, against a recording stand-in for the `tensorrt` module.

This catches mistakes in our own code (wrong names, profile shapes, cache reuse) on CPU. It does not prove
the real TensorRT API behaves as the stand-in does: the real thing is covered by the `tensorrt`-marked tests
in test_gpu.py, which have not run yet (see docs/export.md).
"""

from __future__ import annotations

import sys
import threading
import time
import types
from pathlib import Path
from types import SimpleNamespace

import pytest

import export.runtime.trt
from export import tensorrt_build
from export import cache_files
from export.errors import ExportError
from export.tensorrt_build import BuildOptions, Profile, build_engine, build_tensorrt_export


def fake_tensorrt(calls: list) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.99-fake"
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=0)
    trt.BuilderFlag = SimpleNamespace(FP16="FP16", TF32="TF32")
    trt.MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")

    class Cache:
        def serialize(self):
            return b"timing-cache"

    class Config:
        def set_memory_pool_limit(self, pool, size): calls.append(("pool", pool, size))
        def set_flag(self, flag): calls.append(("flag", flag))
        def clear_flag(self, flag): calls.append(("clear", flag))
        def add_optimization_profile(self, profile): calls.append(("profile", profile.shapes))
        def create_timing_cache(self, data): calls.append(("cache-in", bytes(data))); return Cache()
        def set_timing_cache(self, cache, ignore_mismatch): return True
        def get_timing_cache(self): return Cache()

    class OptProfile:
        shapes: dict = {}
        def set_shape(self, name, lo, opt, hi): self.shapes = {name: (lo, opt, hi)}

    class Builder:
        def __init__(self, logger): pass
        def create_network(self, flags): calls.append(("network", flags)); return object()
        def create_builder_config(self): return Config()
        def create_optimization_profile(self): return OptProfile()
        def build_serialized_network(self, network, config):
            calls.append(("build",))
            hook = getattr(trt, "on_build", None)  # lets a test act while an engine is being built
            return hook() if hook else b"engine-bytes"

    class OnnxParser:
        num_errors = 0
        def __init__(self, network, logger): pass
        def parse_from_file(self, path): calls.append(("parse", path)); return True

    trt.Builder, trt.OnnxParser = Builder, OnnxParser
    return trt


@pytest.fixture
def calls(monkeypatch):
    recorded: list = []
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(recorded))
    monkeypatch.setattr(export.runtime.trt, "_LOGGER", None)  # a logger of the fake module, dropped after
    monkeypatch.setattr(tensorrt_build, "gpu_name", lambda *a: "Fake GPU")
    return recorded


def build(root, out, profile: Profile, **kw):
    """`python -m export tensorrt --reuse` without the parity check (no real engines to run here)."""
    return build_tensorrt_export(root, out, BuildOptions(profile=profile), parity=False, reuse=True, **kw)


def test_profile_must_be_ordered():
    with pytest.raises(ValueError, match="min-batch <= opt-batch <= max-batch"):
        Profile(8, 4, 16)
    assert Profile(1, 2, 4).shapes([3, 64, 64]) == ((1, 3, 64, 64), (2, 3, 64, 64), (4, 3, 64, 64))


def test_fp32_graph_with_fp16_option_is_weakly_typed_fp16(bundled_export, calls, tmp_path):
    root, manifest = bundled_export
    build_engine(root / "image.onnx", tmp_path / "image.engine", manifest.image, "fp32",
                 BuildOptions(fp16=True, profile=Profile(1, 8, 64)), tmp_path / "timing.cache")
    assert ("network", 0) in calls and ("flag", "FP16") in calls and ("clear", "TF32") not in calls
    assert ("profile", {"pixels": ((1, 3, 64, 64), (8, 3, 64, 64), (64, 3, 64, 64))}) in calls
    assert (tmp_path / "image.engine").read_bytes() == b"engine-bytes"
    assert (tmp_path / "timing.cache").read_bytes() == b"timing-cache"


def test_fp16_graph_is_strongly_typed(bundled_export_fp16, calls, tmp_path):
    root, manifest = bundled_export_fp16
    build_engine(root / "text.onnx", tmp_path / "text.engine", manifest.text, "fp16", BuildOptions(),
                 tmp_path / "timing.cache")
    assert ("network", 1) in calls and ("flag", "FP16") not in calls
    assert ("profile", {"tokens": ((1, 24), (32, 24), (256, 24))}) in calls


def test_a_build_step_with_reuse_builds_once_and_keeps_what_it_built(bundled_export, calls, tmp_path):
    root, manifest = bundled_export
    first = build(root, tmp_path / "engines", Profile(max=64))
    assert [c for c in calls if c[0] == "build"] == [("build",), ("build",)]
    assert ("cache-in", b"timing-cache") in calls  # the second tower reused the first one's timing cache
    assert first.kind == "tensorrt" and manifest.tokenizer["vocab"] in first.files  # tokenises on its own
    calls.clear()
    assert build(root, tmp_path / "engines", Profile(max=64)).files == first.files
    assert not [c for c in calls if c[0] == "build"]  # the next start's build step keeps them
    build(root, tmp_path / "engines", Profile(max=128))
    assert len([c for c in calls if c[0] == "build"]) == 2  # another profile: rebuilt


def test_serving_an_onnx_export_with_tensorrt_never_builds_and_names_the_command(bundled_export, calls, monkeypatch):
    from export.runtime import load_encoders

    with pytest.raises(ExportError, match=r"never builds TensorRT engines: build them once with `python -m export "
                                          r"tensorrt --onnx .* --out .*-trt`"):
        load_encoders(bundled_export[0], backend="tensorrt", device="cuda")
    assert not [c for c in calls if c[0] == "build"]


def test_runtime_and_engine_builder_do_not_import_each_other():
    """Loading an export cannot reach the builder: export/runtime never names export.tensorrt_build."""
    runtime = Path(export.runtime.trt.__file__).parent
    assert not [p.name for p in runtime.glob("*.py") if "tensorrt_build" in p.read_text()]


def test_fp32_engines_are_built_without_tf32_and_the_manifest_says_so(bundled_export, calls, tmp_path):
    root, manifest = bundled_export
    build_engine(root / "image.onnx", tmp_path / "image.engine", manifest.image, "fp32", BuildOptions(),
                 tmp_path / "timing.cache")
    assert ("clear", "TF32") in calls
    (tmp_path / "text.engine").write_bytes(b"engine-bytes")
    engines = {t: SimpleNamespace(file=f"{t}.engine") for t in ("image", "text")}
    for fp16, tf32 in ((False, False), (True, True)):
        m = tensorrt_build._engine_manifest(manifest, tmp_path, engines, [], BuildOptions(fp16=fp16), "Fake GPU")
        assert m.tensorrt["tf32"] is tf32


def test_a_rebuilt_engine_replaces_the_old_one_in_one_step(bundled_export, calls, tmp_path, monkeypatch):
    """While the new engine is written, a reader (another replica) still gets the whole old one."""
    root, manifest = bundled_export
    engine = tmp_path / "image.engine"
    engine.write_bytes(b"old-engine")
    seen: list[bytes] = []
    fsync = cache_files.os.fsync
    monkeypatch.setattr(cache_files.os, "fsync", lambda fd: (seen.append(engine.read_bytes()), fsync(fd)))
    build_engine(root / "image.onnx", engine, manifest.image, "fp32", BuildOptions(), tmp_path / "timing.cache")
    assert seen and seen[0] == b"old-engine"  # new bytes written and synced, the name not yet moved
    assert engine.read_bytes() == b"engine-bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.engine", "timing.cache"]  # no temporary left


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "timing.cache"
    target.write_bytes(b"old")
    monkeypatch.setattr(cache_files.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        cache_files.write_atomic(target, b"new")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["timing.cache"]


def test_build_steps_sharing_a_volume_build_each_engine_once(bundled_export, calls, tmp_path, caplog):
    """Two build steps at once on one engine directory (init containers of two pods): the second waits on the
    lock, then reuses the engines."""
    root, manifest = bundled_export
    trt = sys.modules["tensorrt"]
    building, proceed = threading.Event(), threading.Event()

    def first_build_holds():  # the first build stays in progress until the test lets it finish
        if not building.is_set():
            building.set()
            proceed.wait(30)
        return b"engine-bytes"

    trt.on_build = first_build_holds
    results: dict[str, dict] = {}

    def load(name: str) -> None:
        results[name] = build(root, tmp_path / "engines", Profile(max=64)).files

    with caplog.at_level("INFO", logger="export.cache_files"):
        a = threading.Thread(target=load, args=("a",))
        a.start()
        assert building.wait(30)
        b = threading.Thread(target=load, args=("b",))
        b.start()
        deadline = time.monotonic() + 30  # poll: b either waits on the lock (logged) or builds (the race)
        while time.monotonic() < deadline and "waiting for another process" not in caplog.text \
                and len([c for c in calls if c[0] == "build"]) < 2:
            time.sleep(0.01)
        proceed.set()
        a.join(30), b.join(30)
    assert "waiting for another process to finish building TensorRT engines" in caplog.text
    assert len([c for c in calls if c[0] == "build"]) == 2  # image + text, once
    assert results["a"] == results["b"]
