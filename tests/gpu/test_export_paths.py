"""GPU paths. Skipped on CPU machines (see tests/conftest.py); run them with scripts/gpu_check.sh.

A path whose runtime is not installed on the GPU machine (onnx, onnxruntime-gpu, TensorRT) is skipped with the
reason, so the report says what ran and what did not.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from export.parity import MIN_COSINE, check_parity, row_cosine
from export.runtime import load_encoders
from export.runtime.ort import CUDA_EP, TRT_EP


def _require_ep(ep: str) -> None:
    onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")

    if ep not in onnxruntime.get_available_providers():
        pytest.skip(f"{ep} not in this onnxruntime build ({onnxruntime.get_available_providers()}); "
                    f"install the `gpu` extra")


# Session-scoped so that they run before the session-scoped exports they come before in a test's arguments:
# a machine without the provider skips without paying for an export first.
@pytest.fixture(scope="session")
def cuda_ep() -> None:
    _require_ep(CUDA_EP)


@pytest.fixture(scope="session")
def trt_ep() -> None:
    _require_ep(TRT_EP)


@pytest.mark.gpu
def test_torch_cuda_matches_cpu(bundled):
    x = torch.randn(8, 3, *bundled.preprocess.size)
    with torch.no_grad():
        cpu = bundled.model.encode_image(x, normalize=True).numpy()
        gpu_model = bundled.model.to("cuda")
        try:
            gpu = gpu_model.encode_image(x.cuda(), normalize=True).cpu().numpy()
        finally:
            bundled.model.to("cpu")
    assert row_cosine(cpu, gpu).min() >= MIN_COSINE["fp32"] - 1e-5  # cuDNN convolutions may use TF32


@pytest.mark.gpu
def test_torch_cuda_fp16_as_served_matches_cpu(bundled_dir, bundled):
    """The torch backend's fp16 (open_clip's precision="fp16", LayerNorm in fp32), loaded through the factory."""
    from models.factory import load_model

    half = load_model(str(bundled_dir), device="cuda", precision="fp16").model
    x = torch.randn(8, 3, *bundled.preprocess.size)
    with torch.no_grad():
        cpu = bundled.model.encode_image(x, normalize=True).numpy()
        gpu = half.encode_image(x.to("cuda", torch.float16), normalize=True).float().cpu().numpy()
    assert row_cosine(cpu, gpu).min() >= MIN_COSINE["fp16"]


@pytest.mark.gpu
@pytest.mark.parametrize("which,precision", [("bundled_export", "fp32"), ("bundled_export_fp16", "fp16")])
def test_ort_cuda_parity(cuda_ep, which, precision, request, bundled):
    root, _ = request.getfixturevalue(which)
    enc = load_encoders(root, backend="onnx", device="cuda")
    assert enc.providers[0] in (CUDA_EP, TRT_EP)
    report = check_parity(bundled, enc, precision, n_shapes=32)
    assert report.passed, report.table()


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_ort_cuda_io_binding_batches(cuda_ep, bundled_export, batch):
    cpu = load_encoders(bundled_export[0], device="cpu")
    gpu = load_encoders(bundled_export[0], device="cuda")
    x = np.random.default_rng(0).standard_normal((batch, 3, 64, 64), dtype=np.float32)
    assert row_cosine(cpu.encode_image(x), gpu.encode_image(x)).min() >= 0.9999


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_tensorrt_engines_build_and_match(bundled_export, bundled, tmp_path):
    from export.tensorrt_build import BuildOptions, Profile, build_tensorrt_export

    out = tmp_path / "trt"
    manifest = build_tensorrt_export(bundled_export[0], out, BuildOptions(profile=Profile(1, 16, 64)))
    assert manifest.kind == "tensorrt" and manifest.parity["passed"]
    enc = load_encoders(out, backend="tensorrt", device="cuda")
    assert enc.max_batch == 64
    x = np.random.default_rng(0).standard_normal((100, 3, 64, 64), dtype=np.float32)  # > max: chunked
    ref = load_encoders(bundled_export[0]).encode_image(x)
    assert row_cosine(enc.encode_image(x), ref).min() >= 0.9999


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_tensorrt_build_step_keeps_its_engines_across_restarts(bundled_export, tmp_path):
    """The deploy's build step (`python -m export tensorrt --reuse`) builds once; serving only loads."""
    from export.errors import ExportError
    from export.tensorrt_build import BuildOptions, Profile, build_tensorrt_export

    out = tmp_path / "trt"
    options = BuildOptions(profile=Profile(1, 16, 32))
    build_tensorrt_export(bundled_export[0], out, options, reuse=True)
    engine = out / "image.engine"
    built = engine.stat().st_mtime_ns
    build_tensorrt_export(bundled_export[0], out, options, reuse=True)  # a "restart": the step runs again
    assert engine.stat().st_mtime_ns == built
    enc = load_encoders(out, backend="tensorrt", device="cuda")
    tokens = np.asarray(enc.tokenizer()(["a red circle"]))  # batch 1: padded to the profile's min if needed
    assert enc.encode_text(tokens).shape == (1, 128)
    assert "torch" not in enc.providers[0]
    with pytest.raises(ExportError, match="never builds TensorRT engines"):
        load_encoders(bundled_export[0], backend="tensorrt", device="cuda")


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_ort_tensorrt_ep_starts_in_a_process_that_never_imported_tensorrt(trt_ep, bundled_export):
    """The server never imports tensorrt: ORT's TensorRT EP must find TensorRT's libraries by our loading alone."""
    code = ("import sys; from export.runtime import load_encoders; "
            f"enc = load_encoders({str(bundled_export[0])!r}, backend='onnx', device='cuda', max_batch=8); "
            "assert 'tensorrt' not in sys.modules, 'tensorrt was imported'; print(enc.providers)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    assert TRT_EP in out.stdout


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_ort_tensorrt_ep_parity(trt_ep, bundled_export, bundled):
    enc = load_encoders(bundled_export[0], backend="onnx", device="cuda", max_batch=64)
    assert enc.providers[0] == TRT_EP
    report = check_parity(bundled, enc, "fp32", n_shapes=16)
    assert report.passed, report.table()
