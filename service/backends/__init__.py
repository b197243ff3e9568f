"""Inference backends: torch (from the models factory) or an export directory (onnx / tensorrt)."""

from __future__ import annotations

from service.backends.base import Backend
from service.settings import Settings


def load_backend(settings: Settings) -> Backend:
    """Build the backend the settings ask for (this is where the model is loaded)."""
    if settings.backend == "torch":
        from service.backends.torch_backend import TorchBackend

        return TorchBackend(settings)
    from service.backends.export_backend import ExportBackend

    return ExportBackend(settings)


__all__ = ["Backend", "load_backend"]
