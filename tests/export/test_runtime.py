"""Runtime wrappers: provider choice, lazy optional imports, backends refused with a reason."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from export.errors import ExportError, MissingDependencyError
from export.runtime import load_encoders
from export.runtime.deps import require_onnxruntime, require_tensorrt
from export.runtime.ort import CPU_EP, CUDA_EP, TRT_EP, choose_providers


def test_cpu_device_uses_cpu_provider():
    assert choose_providers("cpu", [TRT_EP, CUDA_EP, CPU_EP])[0] == [CPU_EP]


def test_cuda_prefers_tensorrt_then_cuda():
    providers, why = choose_providers("cuda", [TRT_EP, CUDA_EP, CPU_EP])
    assert providers == [TRT_EP, CUDA_EP, CPU_EP] and "using TensorrtExecutionProvider" in why


def test_cuda_without_tensorrt_ep_says_why():
    providers, why = choose_providers("cuda", [CUDA_EP, CPU_EP])
    assert providers == [CUDA_EP, CPU_EP]
    assert "TensorrtExecutionProvider not available" in why and "clip-serve[gpu]" in why


def test_cuda_on_a_cpu_build_falls_back_and_says_why():
    providers, why = choose_providers("cuda", [CPU_EP])
    assert providers == [CPU_EP]
    assert "falling back to CPU" in why and "CUDAExecutionProvider not available" in why


def test_unknown_device():
    with pytest.raises(ValueError):
        choose_providers("tpu", [CPU_EP])


def test_cuda_request_on_this_machine_reports_what_runs(bundled_export, caplog):
    """Asking for CUDA where the onnxruntime build has none still works, on CPU, and says so."""
    import onnxruntime

    if CUDA_EP in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA; covered by the gpu tests")
    with caplog.at_level("WARNING"):
        enc = load_encoders(bundled_export[0], backend="onnx", device="cuda")
    assert enc.providers == [CPU_EP]
    assert "falling back to CPU" in caplog.text


def test_thread_setting_is_applied(bundled_export):
    enc = load_encoders(bundled_export[0], threads=1)
    opts = enc.image.session.get_session_options()
    assert opts.intra_op_num_threads == 1
    assert enc.max_batch is None


def test_fp16_export_takes_float32_and_float64_and_returns_float32(bundled_export_fp16):
    enc = load_encoders(bundled_export_fp16[0])
    for dtype in (np.float32, np.float64):
        out = enc.encode_image(np.zeros((2, 3, 64, 64), dtype))
        assert out.dtype == np.float32 and out.shape == (2, 128)
        np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, rtol=1e-3)


def test_package_import_needs_neither_onnxruntime_nor_tensorrt():
    code = ("import sys, export, export.runtime, export.manifest, export.tensorrt_build, export.runtime.trt; "
            "bad = [m for m in ('onnxruntime', 'tensorrt') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_tensorrt_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'clip-serve\[gpu\]'"):
        require_tensorrt()


def test_missing_onnxruntime_names_the_extras(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependencyError, match=r"clip-serve\[cpu\].*clip-serve\[gpu\]"):
        require_onnxruntime()


def test_tensorrt_backend_refuses_cpu(bundled_export):
    with pytest.raises(ExportError, match="device='cuda' only"):
        load_encoders(bundled_export[0], backend="tensorrt", device="cpu")


def test_tensorrt_backend_without_tensorrt_or_gpu_says_what_is_missing(bundled_export, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingDependencyError, match=r"clip-serve\[gpu\]|CUDA GPU"):
        load_encoders(bundled_export[0], backend="tensorrt", device="cuda")


def test_bad_backend_name(bundled_export):
    with pytest.raises(ValueError, match="backend must be one of"):
        load_encoders(bundled_export[0], backend="openvino")
