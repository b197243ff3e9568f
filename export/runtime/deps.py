"""Lazy imports of optional runtimes: a CPU install never imports TensorRT, and a missing one says what to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from export.errors import CPU_EXTRA, GPU_EXTRA, MissingDependencyError


def require_onnxruntime() -> ModuleType:
    """The onnxruntime module (CPU or GPU build), or a MissingDependencyError naming the extra."""
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as e:
        raise MissingDependencyError(
            f"onnxruntime is not installed ({e}); install it with {CPU_EXTRA} on CPU or {GPU_EXTRA} on a GPU "
            f"machine (the two builds conflict: install only one).") from e


def require_tensorrt() -> ModuleType:
    """The tensorrt module, or a MissingDependencyError naming the `gpu` extra."""
    try:
        return importlib.import_module("tensorrt")
    except ImportError as e:
        raise MissingDependencyError(
            f"TensorRT is not installed ({e}); the tensorrt backend needs the `gpu` extra: {GPU_EXTRA} "
            f"(and an NVIDIA GPU with a matching driver).") from e


def require_cudart() -> ModuleType:
    """NVIDIA's CUDA runtime bindings (cuda-python), which the TensorRT runner allocates buffers and streams with,
    so serving TensorRT engines needs no torch."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):  # cuda-bindings >= 12.6, then older cuda-python
        try:
            return importlib.import_module(name)
        except ImportError as e:
            error = e
    raise MissingDependencyError(
        f"cuda-python is not installed ({error}); the tensorrt backend needs the `gpu` extra: {GPU_EXTRA}.")


def require_cuda_torch() -> ModuleType:
    """torch with a usable CUDA device (eager PyTorch references for TensorRT builds and GPU checks)."""
    try:
        import torch
    except ImportError as e:
        raise MissingDependencyError(f"torch is not installed ({e}); building and checking TensorRT engines needs "
                                     f"the `torch` extra (pip install 'clip-serve[gpu]' brings it).") from e

    if not torch.cuda.is_available():
        raise MissingDependencyError(
            "the tensorrt backend needs a CUDA GPU visible to PyTorch (torch.cuda.is_available() is False): "
            "install a CUDA build of torch and check the driver, or use backend='onnx' on CPU.")
    return torch
