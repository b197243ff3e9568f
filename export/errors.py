"""Errors of the export package. Each message names what is wrong and how to fix it."""

from __future__ import annotations

GPU_EXTRA = "pip install 'clip-serve[gpu]'"
CPU_EXTRA = "pip install 'clip-serve[cpu]'"
TORCH_EXTRA = "pip install 'clip-serve[torch]'"


class ExportError(RuntimeError):
    """An export directory, graph or engine that cannot be produced or used as asked."""


class ParityError(ExportError):
    """Exported graphs disagree with eager PyTorch beyond the tolerance for their precision."""


class MissingDependencyError(ExportError, ImportError):
    """An optional runtime (onnxruntime, onnxruntime-gpu, tensorrt) is not installed."""
