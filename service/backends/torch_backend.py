"""Eager PyTorch on CPU or CUDA: a model from the models factory run by export.runtime.eager (the `torch` extra)."""

from __future__ import annotations

import logging

from export.runtime.eager import TorchTowers
from service.backends.base import Backend
from service.settings import Settings

log = logging.getLogger("service.backends.torch")


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, settings: Settings):
        self.device = settings.resolved_device()
        self.precision = settings.precision
        self.towers = TorchTowers.load(settings.model, settings.pretrained, settings.checkpoint, device=self.device,
                                       precision=self.precision, cache_dir=settings.cache_dir,
                                       threads=settings.threads)
        loaded = self.towers.loaded
        self.model_id, self.fingerprint = loaded.model_id, loaded.fingerprint
        self.embed_dim, self.context_length = loaded.embed_dim, loaded.context_length
        self.logit_scale, self.logit_bias = loaded.logit_scale, loaded.logit_bias
        self.preprocess, self.tokenizer = loaded.preprocess, loaded.tokenizer
