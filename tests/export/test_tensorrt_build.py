"""The TensorRT build code path, against a recording stand-in for the `tensorrt` module.

This catches mistakes in our own code (wrong names, profile shapes, cache reuse) on CPU. It does not prove
the real TensorRT API behaves as the stand-in does: the real thing is covered by the `tensorrt`-marked tests
in test_gpu.py, which have not run yet (see docs/export.md).
"""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest

import export.runtime.trt
from export import tensorrt_build
from export.tensorrt_build import BuildOptions, Profile, build_engine, cached_engines


def fake_tensorrt(calls: list) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.99-fake"
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=0)
    trt.BuilderFlag = SimpleNamespace(FP16="FP16")
    trt.MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")

    class Cache:
        def serialize(self):
            return b"timing-cache"

    class Config:
        def set_memory_pool_limit(self, pool, size): calls.append(("pool", pool, size))
        def set_flag(self, flag): calls.append(("flag", flag))
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
        def build_serialized_network(self, network, config): calls.append(("build",)); return b"engine-bytes"

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
    fake_torch = SimpleNamespace(cuda=SimpleNamespace(get_device_name=lambda *a: "Fake GPU"))
    monkeypatch.setattr(tensorrt_build, "require_cuda_torch", lambda: fake_torch)
    return recorded


def test_profile_must_be_ordered():
    with pytest.raises(ValueError, match="min-batch <= opt-batch <= max-batch"):
        Profile(8, 4, 16)
    assert Profile(1, 2, 4).shapes([3, 64, 64]) == ((1, 3, 64, 64), (2, 3, 64, 64), (4, 3, 64, 64))


def test_fp32_graph_with_fp16_option_is_weakly_typed_fp16(bundled_export, calls, tmp_path):
    root, manifest = bundled_export
    build_engine(root / "image.onnx", tmp_path / "image.engine", manifest.image, "fp32",
                 BuildOptions(fp16=True, profile=Profile(1, 8, 64)), tmp_path / "timing.cache")
    assert ("network", 0) in calls and ("flag", "FP16") in calls
    assert ("profile", {"pixels": ((1, 3, 64, 64), (8, 3, 64, 64), (64, 3, 64, 64))}) in calls
    assert (tmp_path / "image.engine").read_bytes() == b"engine-bytes"
    assert (tmp_path / "timing.cache").read_bytes() == b"timing-cache"


def test_fp16_graph_is_strongly_typed(bundled_export_fp16, calls, tmp_path):
    root, manifest = bundled_export_fp16
    build_engine(root / "text.onnx", tmp_path / "text.engine", manifest.text, "fp16", BuildOptions(),
                 tmp_path / "timing.cache")
    assert ("network", 1) in calls and ("flag", "FP16") not in calls
    assert ("profile", {"tokens": ((1, 24), (32, 24), (256, 24))}) in calls


def test_engines_from_an_onnx_export_are_built_once_and_reused(bundled_export, calls, tmp_path):
    root, manifest = bundled_export
    first = cached_engines(root, manifest, tmp_path / "engines", Profile(max=64))
    assert [c for c in calls if c[0] == "build"] == [("build",), ("build",)]
    assert ("cache-in", b"timing-cache") in calls  # the second tower reused the first one's timing cache
    calls.clear()
    assert cached_engines(root, manifest, tmp_path / "engines", Profile(max=64)) == first
    assert not [c for c in calls if c[0] == "build"]  # a restart reuses them
    cached_engines(root, manifest, tmp_path / "engines", Profile(max=128))
    assert len([c for c in calls if c[0] == "build"]) == 2  # another profile: rebuilt
