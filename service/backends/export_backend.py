"""ONNX Runtime or TensorRT, loaded from an export directory's manifest alone (no source model needed)."""

from __future__ import annotations

import logging

import numpy as np

from service.backends.base import Backend
from service.settings import Settings

log = logging.getLogger("service.backends.export")


class ExportBackend(Backend):
    def __init__(self, settings: Settings):
        from export.runtime import load_encoders

        self.name = settings.backend
        self.device = settings.resolved_device()
        self.encoders = load_encoders(settings.export_dir, backend=settings.backend, device=self.device,
                                      threads=settings.threads,
                                      max_batch=max(settings.image_max_batch, settings.text_max_batch))
        m = self.encoders.manifest
        self.precision = m.precision
        if settings.precision != m.precision:
            log.warning("CLIP_PRECISION=%s ignored: the export in %s is %s", settings.precision,
                        settings.export_dir, m.precision)
        self.model_id, self.fingerprint, self.embed_dim = m.model_id, m.fingerprint, m.embed_dim
        self.context_length, self.logit_scale = m.context_length, float(m.logit_scale)
        self.preprocess = m.preprocess_config
        self.tokenizer = self.encoders.tokenizer()
        self.max_batch = self.encoders.max_batch
        log.info("export backend %s on %s: providers %s", self.name, self.device, self.encoders.providers)

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        return self.encoders.encode_image(pixels)

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        return self.encoders.encode_text(tokens)
