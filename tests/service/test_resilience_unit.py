"""In-process checks with a fake backend: a fatal encoder error turns /readyz 503 and is counted, OOM and plain
errors are isolated per item; settings for lists and URLs; the tokenizer's work is bounded."""

from __future__ import annotations

import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from models.preprocess import PreprocessConfig
from service.app import create_app
from service.backends.base import Backend, clip_text
from service.settings import Settings
from tests.service.server import metric_value


class FakeBackend(Backend):
    """Texts embed to a one-hot of their length; a text containing a trigger word raises the matching error."""

    name, device, precision, model_id, fingerprint = "fake", "cpu", "fp32", "fake", "f" * 16
    embed_dim, context_length, logit_scale = 8, 16, 100.0
    preprocess = PreprocessConfig(size=(8, 8))

    def __init__(self, settings: Settings):
        self.tokenizer = lambda texts: np.array([[len(t) % 8, ("fatal" in t) + 2 * ("oom" in t) + 4 * ("bad" in t)]
                                                 + [0] * 14 for t in texts])

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        return np.eye(8, dtype=np.float32)[np.zeros(len(pixels), dtype=int)]

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        flags = tokens[:, 1]
        if (flags & 1).any():
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        if (flags & 2).any() and len(tokens) > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if (flags & 4).any():
            raise ValueError("this item breaks the encoder")
        return np.eye(8, dtype=np.float32)[tokens[:, 0]]


@pytest.fixture
def client():
    app = create_app(Settings(text_max_wait_ms=50), backend_factory=FakeBackend)
    with TestClient(app) as c:
        deadline = time.monotonic() + 30
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield c


def test_a_bad_item_fails_alone_and_oom_is_split(client):
    ok = client.post("/embed/text", json={"texts": ["a", "bb", "ccc"]})
    assert ok.status_code == 200
    bad = client.post("/embed/text", json={"texts": ["dddd", "bad one", "eeeee"]})
    assert bad.status_code == 503 and bad.json()["error"]["type"] == "backend_error"
    oom = client.post("/embed/text", json={"texts": ["oom 1", "oom two", "three"]})  # fits one at a time
    assert oom.status_code == 200, oom.text
    metrics = client.get("/metrics").text
    assert metric_value(metrics, "clip_backend_errors_total", kind="error") >= 1
    assert metric_value(metrics, "clip_backend_errors_total", kind="oom") >= 1
    assert client.get("/readyz").status_code == 200, "ordinary errors do not make the server unready"


def test_a_fatal_backend_error_turns_readiness_off(client):
    r = client.post("/embed/text", json={"texts": ["fatal"]})
    assert r.status_code == 503
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "CUDA error" in ready.json()["reason"]
    assert metric_value(client.get("/metrics").text, "clip_backend_errors_total", kind="fatal") == 1
    assert metric_value(client.get("/metrics").text, "clip_ready") == 0
    after = client.post("/embed/text", json={"texts": ["anything"]})
    assert after.status_code == 503 and after.headers["Retry-After"]


def test_list_settings_accept_commas_and_json(monkeypatch):
    monkeypatch.setenv("CLIP_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("CLIP_URL_ALLOWED_HOSTS", '["img.example.com", "*.cdn.example"]')
    monkeypatch.setenv("CLIP_PUBLIC_PATHS", "/healthz")
    s = Settings()
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert s.url_allowed_hosts == ["img.example.com", "*.cdn.example"] and s.public_paths == ["/healthz"]
    assert not s.allow_urls  # off by default


def test_urls_need_an_allow_list():
    with pytest.raises(ValueError, match="CLIP_URL_ALLOWED_HOSTS"):
        Settings(allow_urls=True)
    assert Settings(allow_urls=True, url_allowed_hosts=["*"]).allow_urls


@pytest.mark.parametrize("text,expected", [
    ("a red circle", "a red circle"),
    ("x" * 100_000, "x" * 100),
    ("word " * 1000, ("word " * 1000)[:16 * 77]),
    ("🙂" * 500, "🙂" * 100),
    ("Donaudampfschifffahrtsgesellschaftskapitänsmützenabzeichen",) * 2,
])
def test_tokenizer_input_is_bounded_but_ordinary_text_is_untouched(text, expected):
    assert clip_text(text, 77) == expected


def test_stored_label_sets_are_bounded_by_bytes():
    app = create_app(Settings(labelset_cache_mb=0.01), backend_factory=FakeBackend)  # 10,485 bytes of label text
    with TestClient(app) as c:
        deadline = time.monotonic() + 30
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert c.put("/labelsets/a", json={"labels": ["x" * 4000, "y"]}).status_code == 200
        assert c.put("/labelsets/a", json={"labels": ["x" * 6000, "y"]}).status_code == 200  # replacing: own bytes
        full = c.put("/labelsets/b", json={"labels": ["z" * 6000]})
        assert full.status_code == 413 and "CLIP_LABELSET_CACHE_MB" in full.json()["error"]["message"]
        assert c.delete("/labelsets/a").status_code == 204
        assert c.put("/labelsets/b", json={"labels": ["z" * 6000]}).status_code == 200
