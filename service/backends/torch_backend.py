"""Eager PyTorch on CPU or CUDA, built from the models factory."""

from __future__ import annotations

import logging

import numpy as np
import torch

from models.factory import load_model
from service.backends.base import Backend
from service.settings import Settings

log = logging.getLogger("service.backends.torch")


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, settings: Settings):
        self.device = settings.resolved_device()
        self.precision = settings.precision
        if self.precision == "fp16" and self.device != "cuda":
            raise ValueError("CLIP_PRECISION=fp16 needs CLIP_DEVICE=cuda with the torch backend "
                             "(or an fp16 export with CLIP_BACKEND=onnx)")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("CLIP_DEVICE=cuda but torch sees no CUDA device; use CLIP_DEVICE=cpu or auto")
        if settings.threads:
            torch.set_num_threads(settings.threads)
        loaded = load_model(settings.model, settings.pretrained, settings.checkpoint, device=self.device,
                            precision=self.precision, cache_dir=settings.cache_dir)
        self.model = loaded.model
        self.model_id, self.fingerprint = loaded.model_id, loaded.fingerprint
        self.embed_dim, self.context_length = loaded.embed_dim, loaded.context_length
        self.logit_scale, self.preprocess, self.tokenizer = loaded.logit_scale, loaded.preprocess, loaded.tokenizer
        self._dtype = torch.float16 if self.precision == "fp16" else torch.float32

    @torch.inference_mode()
    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(pixels).to(self.device, self._dtype, non_blocking=True)  # [B, 3, H, W]
        return self.model.encode_image(x, normalize=True).float().cpu().numpy()

    @torch.inference_mode()
    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(tokens).to(self.device)  # [B, L]
        return self.model.encode_text(t, normalize=True).float().cpu().numpy()
