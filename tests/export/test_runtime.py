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


def test_cpu_towers_share_one_arena(bundled_export):
    """Both sessions take CPU memory from the one arena registered in ONNX Runtime's environment (export/runtime/ort.py
    share_cpu_arena): the towers never run at once, so one arena sized for the larger serves both."""
    enc = load_encoders(bundled_export[0], device="cpu")
    for tower in (enc.image, enc.text):
        assert tower.session.get_session_options().get_session_config_entry("session.use_env_allocators") == "1"
    out = enc.encode_image(np.zeros((2, 3, 64, 64), np.float32))
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, rtol=1e-5)


def test_fp16_export_takes_float32_and_float64_and_returns_float32(bundled_export_fp16):
    enc = load_encoders(bundled_export_fp16[0])
    for dtype in (np.float32, np.float64):
        out = enc.encode_image(np.zeros((2, 3, 64, 64), dtype))
        assert out.dtype == np.float32 and out.shape == (2, 128)
        np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, rtol=1e-3)


def test_package_import_needs_neither_onnxruntime_nor_tensorrt_nor_torch():
    """The runtime's interface and its ONNX Runtime and TensorRT modules load no torch: a lean server can use them."""
    code = ("import sys, export, export.runtime, export.manifest, export.tensorrt_build, export.runtime.trt, "
            "export.runtime.ort; bad = [m for m in ('onnxruntime', 'tensorrt', 'torch', 'open_clip') "
            "if m in sys.modules]; assert not bad, bad")
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


def engine_dir_like(bundled_export, copy_export):
    """A directory whose manifest says TensorRT engines (the files are the ONNX ones: nothing here can run them)."""
    from dataclasses import replace

    from export.manifest import write_manifest

    root = copy_export(bundled_export[0])
    write_manifest(replace(bundled_export[1], kind="tensorrt", tensorrt={"version": "10.x", "gpu": "a GPU"}), root)
    return root


def test_tensorrt_backend_without_tensorrt_says_what_is_missing(bundled_export, copy_export, monkeypatch):
    root = engine_dir_like(bundled_export, copy_export)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingDependencyError, match=r"clip-serve\[gpu\]"):
        load_encoders(root, backend="tensorrt", device="cuda")


def test_tensorrt_runner_without_cuda_python_names_the_extra(monkeypatch):
    from export.runtime.deps import require_cudart

    monkeypatch.setitem(sys.modules, "cuda", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
    with pytest.raises(MissingDependencyError, match=r"cuda-python.*clip-serve\[gpu\]"):
        require_cudart()


def test_bad_backend_name(bundled_export):
    with pytest.raises(ValueError, match="backend must be one of"):
        load_encoders(bundled_export[0], backend="openvino")
