"""The GPU report's own logic, on CPU (no GPU here): every path is listed, torch-CUDA comes first and needs no
ONNX export, and a path that cannot run says why, without stopping the others."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from export import gpu_check

ALL_PATHS = sorted(f"{p} {q}" for p in gpu_check.PATHS for q in ("fp32", "fp16"))


@pytest.fixture(autouse=True)
def no_gpu(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine scripts/gpu_check.sh runs the real thing")
    monkeypatch.setattr(gpu_check, "BATCHES", (1, 2))


def test_gpu_check_reports_every_path_and_why_not(bundled_dir, tmp_path, capsys):
    report = gpu_check.run(tmp_path, seconds=0.01, model=str(bundled_dir))
    assert sorted(r["path"] for r in report["results"]) == ALL_PATHS
    assert all(not r["ran"] and r["why_not"] for r in report["results"])
    out = capsys.readouterr().out
    assert "torch-CUDA fp32" in out and "NOT RUN: RuntimeError: no CUDA" in out
    assert "ORT-CUDA fp32" in out and "clip-serve[gpu]" in out


def test_torch_cuda_is_measured_first_and_a_failed_export_fails_only_the_onnx_paths(bundled_dir, tmp_path,
                                                                                    monkeypatch):
    """Where onnx is missing (the lent GPU machine may lack it), torch-CUDA still runs and the ONNX paths say why."""
    from export import onnx_export
    from export.runtime import deps

    attempts: list[str] = []

    def no_onnx(*args, **kwargs):
        attempts.append("export")
        raise ModuleNotFoundError("No module named 'onnx'")

    monkeypatch.setattr(onnx_export, "export_onnx", no_onnx)
    gpu_eps = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(deps, "require_onnxruntime", lambda: SimpleNamespace(get_available_providers=lambda: gpu_eps))
    report = gpu_check.run(tmp_path, seconds=0.01, model=str(bundled_dir))
    results = {r["path"]: r["why_not"] for r in report["results"]}
    assert [r["path"] for r in report["results"]][:2] == ["torch-CUDA fp32", "torch-CUDA fp16"]
    assert results["torch-CUDA fp16"].startswith("RuntimeError: no CUDA")
    for path in ("ORT-CUDA fp32", "ORT-CUDA fp16", "ORT-TensorRT fp32", "ORT-TensorRT fp16"):
        assert "ONNX export failed: ModuleNotFoundError: No module named 'onnx'" in results[path], results[path]
    assert attempts == ["export"]  # tried once, its failure reported by every path that needed it


def test_torch_paths_load_the_model_as_the_server_does(bundled_dir, tmp_path, monkeypatch):
    """fp16 through models.factory (open_clip's precision="fp16", LayerNorm kept fp32), not model.half()."""
    from export import source

    loads: list[tuple[str, str]] = []
    real = source.load_source

    def record(spec, device="cpu", precision="fp32"):
        loads.append((device, precision))
        return real(spec, "cpu", "fp32")  # no GPU here: the arguments are what this test checks

    monkeypatch.setattr(source, "load_source", record)
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: True)
    spec, _ = gpu_check.model_source(tmp_path, str(bundled_dir))
    loads.clear()
    enc = gpu_check.torch_towers(spec, "fp16")
    assert loads == [("cuda", "fp16")] and enc._dtype == torch.float16 and enc.precision == "fp16"


def test_bench_eager_torch_on_cuda_loads_the_served_fp16_model(bundled_export_fp16, monkeypatch):
    """`python -m export bench --device cuda` times the model the torch backend serves, not model.half()."""
    from export import bench

    loads: list[tuple[str, str]] = []
    real = bench.load_source

    def record(spec, device="cpu", precision="fp32"):
        loads.append((device, precision))
        return real(spec, "cpu", "fp32")

    monkeypatch.setattr(bench, "load_source", record)
    _, runs = bench.eager_encoders(bundled_export_fp16[1], "cuda", None)
    assert loads == [("cuda", "fp16")] and runs.endswith("cuda fp16")
