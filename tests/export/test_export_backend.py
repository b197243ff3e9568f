"""The export backend's start-up: the tokenizer is built while ONNX Runtime builds its sessions."""

from __future__ import annotations

import threading

import numpy as np

import export.manifest
import export.runtime
from service.backends.export_backend import ExportBackend
from service.settings import Settings


def test_the_tokenizer_is_built_while_the_sessions_load(bundled_export, monkeypatch):
    root, manifest = bundled_export
    built = threading.Event()
    real_tokenizer, real_encoders = export.manifest.load_tokenizer, export.runtime.load_encoders

    def tokenizer(*args, **kwargs):
        tok = real_tokenizer(*args, **kwargs)
        built.set()
        return tok

    def encoders(*args, **kwargs):
        # built one after the other, the tokenizer would only start once this returned
        assert built.wait(30), "the tokenizer was not built while the sessions loaded"
        return real_encoders(*args, **kwargs)

    monkeypatch.setattr(export.manifest, "load_tokenizer", tokenizer)
    monkeypatch.setattr(export.runtime, "load_encoders", encoders)
    backend = ExportBackend(Settings(backend="onnx", device="cpu", export_dir=str(root)))
    texts = ["a photo of a cat", "", "Zürich ☕"]
    assert np.array_equal(backend.tokenize(texts), real_tokenizer(manifest, root)(texts))
