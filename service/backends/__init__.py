"""Inference backends: torch (from the models factory) or an export directory (onnx / tensorrt)."""

from __future__ import annotations

from service.backends.base import Backend
from service.settings import Settings


def load_backend(settings: Settings) -> Backend:
    """Build the backend the settings ask for (this is where the model is loaded)."""
    if settings.backend == "torch":
        try:
            from service.backends.torch_backend import TorchBackend
        except ImportError as e:  # a lean install (`pip install '.[onnx]'`): no PyTorch or open_clip
            from export.errors import TORCH_EXTRA, MissingDependencyError

            raise MissingDependencyError(
                f"CLIP_BACKEND=torch needs PyTorch and open_clip, which this install lacks ({e}): {TORCH_EXTRA}; or "
                f"serve an export without them: CLIP_BACKEND=onnx CLIP_EXPORT_DIR=<python -m export onnx ... --out "
                f"directory>") from e
        return TorchBackend(settings)
    from service.backends.export_backend import ExportBackend

    return ExportBackend(settings)


__all__ = ["Backend", "load_backend"]
