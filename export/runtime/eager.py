"""Eager PyTorch behind the towers interface: a models.factory LoadedModel on CPU or CUDA, fp32 or fp16.

fp16 is open_clip's (models.factory loads with precision="fp16": LayerNorm and embeddings stay fp32), never a plain
`model.half()`, so the torch backend, the benchmarks and the GPU check all time and compare the model that is served.
"""

from __future__ import annotations

import numpy as np
import torch

from export.errors import ExportError
from export.runtime.base import Towers
from models.factory import LoadedModel, load_model


class TorchTowers(Towers):
    """A loaded open_clip model: numpy in, L2-normalised float32 numpy out; host<->device copies included."""

    def __init__(self, loaded: LoadedModel, precision: str = "fp32", device: str | None = None) -> None:
        self.loaded, self.model = loaded, loaded.model
        self.device = device or next(self.model.parameters()).device.type  # default: where models.factory put it
        self.precision, self.embed_dim = precision, loaded.embed_dim
        self._dtype = torch.float16 if precision == "fp16" else torch.float32

    @classmethod
    def load(cls, source: str, pretrained: str | None = None, checkpoint: str | None = None, device: str = "cpu",
             precision: str = "fp32", cache_dir: str | None = None, threads: int = 0) -> "TorchTowers":
        """Load through models.factory, refusing what eager PyTorch cannot run here (fp16 on CPU, CUDA without a
        device) with a message that says what to change. threads: torch's CPU threads (0 = leave torch's default)."""
        check_device(device, precision)
        if threads:
            torch.set_num_threads(threads)
        return cls(load_model(source, pretrained, checkpoint, device=device, precision=precision,
                              cache_dir=cache_dir), precision, device)

    @property
    def providers(self) -> list[str]:
        return [f"torch {torch.__version__} {self.device} {self.precision}"]

    @torch.inference_mode()
    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))  # [B, 3, H, W]
        x = x.to(self.device, self._dtype, non_blocking=True)
        return self.model.encode_image(x, normalize=True).float().cpu().numpy()  # [B, D]

    @torch.inference_mode()
    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64)).to(self.device)  # [B, L]
        return self.model.encode_text(t, normalize=True).float().cpu().numpy()  # [B, D]


def check_device(device: str, precision: str) -> None:
    """fp16 needs CUDA with eager PyTorch; CUDA needs a device torch can see."""
    if precision == "fp16" and device != "cuda":
        raise ExportError("fp16 needs device cuda with eager PyTorch (CLIP_DEVICE=cuda with the torch backend), or "
                          "an fp16 export with CLIP_BACKEND=onnx")
    if precision == "int8":
        raise ExportError("int8 runs an int8 export on ONNX Runtime (CLIP_BACKEND=onnx), not eager PyTorch")
    if device == "cuda" and not torch.cuda.is_available():
        raise ExportError(f"device cuda but torch sees no CUDA device (torch {torch.__version__}, built for CUDA "
                          f"{torch.version.cuda}); use device cpu (CLIP_DEVICE=cpu or auto)")
