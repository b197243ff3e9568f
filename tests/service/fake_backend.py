"""A fake backend for tests that isolate the server's own machinery (batching, deadlines, limits) from a model.

Items have names: a text is its own name, an image is named by its colour (COLOURS). The backend records every item
its encoders compute, in order; a batch holding an item named "hold" waits in the encoder until `gate` is set."""

from __future__ import annotations

import io
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import numpy as np
from PIL import Image

from fastapi import FastAPI
from fastapi.testclient import TestClient

from models.preprocess import PreprocessConfig
from service.app import create_app
from service.backends.base import Backend
from service.settings import Settings

COLOURS = {"hold": (255, 0, 0), "late": (0, 255, 0), "fresh": (0, 0, 255)}  # an image's name is its colour


class NamedBackend(Backend):
    """Items are named (texts by their text, images by their colour); a batch holding "hold" waits for `gate`."""

    name, device, precision, model_id, fingerprint = "fake", "cpu", "fp32", "named", "n" * 16
    embed_dim, context_length, logit_scale = 8, 4, 100.0
    preprocess = PreprocessConfig(size=(8, 8))

    def __init__(self, settings: Settings):
        self.gate, self.holding = threading.Event(), threading.Event()
        self.encoded: list[str] = []  # every item the encoders computed, in order
        self._names: list[str] = []
        self._lock = threading.Lock()
        self.tokenizer = self._tokenize

    def _tokenize(self, texts: list[str]) -> np.ndarray:
        with self._lock:  # token 0 of each row is the text's index in _names
            ids = [self._names.index(t) if t in self._names else self._names.append(t) or len(self._names) - 1
                   for t in texts]
        return np.array([[i] + [0] * (self.context_length - 1) for i in ids])

    def warmup(self, image_batch: int, text_batch: int) -> None:
        pass  # nothing to warm up; and the record holds requests' items only

    def _encode(self, names: list[str]) -> np.ndarray:
        self.encoded.extend(names)
        if "hold" in names:
            self.holding.set()
            assert self.gate.wait(60), "the test never released the encoder"
        return np.eye(self.embed_dim, dtype=np.float32)[np.arange(len(names)) % self.embed_dim]

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        return self._encode([self._names[i] for i in tokens[:, 0]])

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:  # [B, 3, 8, 8], normalised: the brightest channel
        names = list(COLOURS)
        return self._encode([names[int(np.argmax(p.mean(axis=(1, 2))))] for p in pixels])


def png(colour: tuple[int, int, int]) -> bytes:
    """A small solid-colour PNG: an image the fake backend names by its colour."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, "PNG")
    return buf.getvalue()


def named_app(settings: Settings) -> tuple[FastAPI, list[NamedBackend]]:
    """An app on a NamedBackend, and a list that holds the backend once the app has loaded it."""
    backends: list[NamedBackend] = []

    def factory(s: Settings) -> NamedBackend:
        backends.append(NamedBackend(s))
        return backends[-1]

    return create_app(settings, backend_factory=factory), backends


@contextmanager
def ready_client(settings: Settings) -> Iterator[tuple[TestClient, NamedBackend]]:
    """A TestClient of named_app(settings) once /readyz answers 200 (the fake backend loads in the app's thread)."""
    app, backends = named_app(settings)
    with TestClient(app) as client:
        limit = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < limit, "the fake backend never became ready"
            time.sleep(0.01)
        yield client, backends[0]
