"""Labels x templates: capped per request and per label set (CLIP_MAX_PROMPTS, 413 before any prompt is built);
each prompt is cut to what can reach the model before labels are multiplied by templates, so memory stays
bounded whatever the labels, and the cut never changes the tokens the model sees."""

from __future__ import annotations

import asyncio
import base64
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from models.preprocess import PreprocessConfig
from models.prompts import fill
from service import engine as engine_module
from service.backends.base import Backend
from service.engine import Engine
from service.errors import PayloadTooLarge
from service.metrics import Metrics
from service.settings import Settings
from service.templates import BUILT_IN, check_prompt_count, prompts_for, reachable_chars, squeeze
from tests.service.conftest import encode, shape_image
from tests.service.server import metric_value

IMAGENET_LABELS = [f"imagenet class {i}" for i in range(1000)]  # x 80 templates = 80,000 prompts


def _text_work(server) -> float:
    """Texts tokenised so far, once no earlier test's work is queued (so only this test's requests can add any)."""
    assert server.wait_idle(), "the shared server's queue never emptied"
    return metric_value(server.metrics(), "clip_preprocess_seconds_count", modality="text")


@pytest.mark.parametrize("kind", ["classify json", "classify multipart", "labelset"])
def test_too_many_prompts_is_413_naming_the_setting(server, kind):
    image = encode(shape_image("red", "circle"))
    before = _text_work(server)
    if kind == "classify json":
        r = httpx.post(server.url + "/classify", json={"image": base64.b64encode(image).decode(),
                                                       "labels": IMAGENET_LABELS, "templates": "openai_imagenet"})
    elif kind == "classify multipart":
        r = httpx.post(server.url + "/classify", files=[("file", ("a.png", image))],
                       data={"labels": IMAGENET_LABELS, "templates": "openai_imagenet"})
    else:
        r = httpx.put(server.url + "/labelsets/imagenet", json={"labels": IMAGENET_LABELS,
                                                                 "templates": "openai_imagenet"})
    assert r.status_code == 413, r.text[:300]
    message = r.json()["error"]["message"]
    assert "CLIP_MAX_PROMPTS" in message and "80,000 prompts" in message, message
    assert _text_work(server) == before, "refused before any text was tokenised or encoded"


def test_the_cap_counts_labels_times_templates():
    check_prompt_count(1000, 10, 10_000)
    with pytest.raises(PayloadTooLarge, match=r"1001 labels x 10 templates = 10,010 prompts.*CLIP_MAX_PROMPTS"):
        check_prompt_count(1001, 10, 10_000)


class FakeTextBackend(Backend):
    """Constant unit embeddings; tokenises like the real backends (Backend.tokenize) into zeros."""

    name, device, precision, model_id, fingerprint = "fake", "cpu", "fp32", "fake", "f" * 16
    embed_dim, context_length, logit_scale = 8, 77, 100.0
    preprocess = PreprocessConfig(size=(8, 8))
    tokenizer = staticmethod(lambda texts: np.zeros((len(texts), 77), dtype=np.int64))

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        raise AssertionError("no images here")

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        return np.full((len(tokens), 8), 8 ** -0.5, dtype=np.float32)


async def _classifier_peak_bytes(settings: Settings, labels: tuple[str, ...], templates: tuple[str, ...]) -> int:
    """Peak Python memory allocated while one classifier is computed (the arguments already exist)."""
    with ThreadPoolExecutor(1) as inference:
        eng = Engine(settings, FakeTextBackend(), Metrics(), inference)
        eng.start()
        tracemalloc.start()
        try:
            proto = await eng.classifier(labels, templates)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            await eng.stop()
    assert proto.shape == (len(labels), 8)
    return peak


def test_long_labels_times_templates_keep_memory_bounded():
    """200 labels of 5,000 characters x 80 templates: the full prompts alone would be 80 MB (the issue's
    1,000 labels made 400 MB); cut to what reaches the model they are a few hundred KB per encoder step.
    Memory is the subject, not the deadline: 16,000 prompts under tracemalloc took over the default 10 s on a
    loaded 2-core machine, so the request may take as long as it needs."""
    settings = Settings(max_prompts=100_000, text_cache_mb=1, text_max_wait_ms=0, request_timeout_s=3600)
    labels = tuple(f"{i} " + "x" * 5000 for i in range(200))
    peak = asyncio.run(_classifier_peak_bytes(settings, labels, BUILT_IN["openai_imagenet"]))
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MB"


def test_the_cap_is_checked_before_any_prompt_is_built(monkeypatch):
    def built(*args):
        raise AssertionError("a prompt was built")

    monkeypatch.setattr(engine_module, "prompts_for", built)
    settings = Settings(max_prompts=100)
    with pytest.raises(PayloadTooLarge, match="CLIP_MAX_PROMPTS"):
        asyncio.run(_classifier_peak_bytes(settings, tuple(f"l{i}" for i in range(11)), ("{}",) * 10))


LONG_LABELS = [
    "x" * 5000,
    "a long label " * 400,
    "spaced" + " " * 3000 + "out words after a long gap",
    "🙂 ünïcödé 青い四角 " * 300,
    "{} braces {} inside" * 200,
    "gap" + " \t" * 20000 + "after 40,000 blanks" + "\n" * 3000 + "then lines" + " word" * 2000,
    "&amp;" * 400 + " entities" + " ünï" * 1000,
    "x" * 100_000,
]
TEMPLATES = ["a photo of a {}.", "{}", "{} and again {}, once more {}", "x" * 2000 + " {} after a long prefix"]


def test_cutting_prompts_never_changes_the_tokens_the_model_sees(bundled):
    """The cut happens before tokenising; Backend.tokenize must see the same thing either way (and it gives open_clip's
    ids: tests/service/test_text_fidelity.py). If the backend changes how far into a text it reads,
    templates.reachable_chars must follow (this test says so)."""
    backend = SimpleNamespace(tokenizer=bundled.tokenizer, context_length=bundled.context_length)
    limit = reachable_chars(bundled.context_length)
    for label in LONG_LABELS:
        cut = prompts_for((label,), tuple(TEMPLATES), limit)
        full = [fill(t, label) for t in TEMPLATES]
        assert all(len(p) <= limit for p in cut)
        assert np.array_equal(Backend.tokenize(backend, cut), Backend.tokenize(backend, full)), label[:40]


def test_the_cut_prompts_are_the_one_fill_cut():
    """service/templates.py fills cut pieces (memory); the prompt is still models.prompts.fill's, cut."""
    limit = reachable_chars(77)
    for label in LONG_LABELS + ["cat", "{}", "a {x} b"]:
        expected = [fill(squeeze(t), squeeze(label))[:limit] for t in TEMPLATES]
        assert prompts_for((label,), tuple(TEMPLATES), limit) == expected, label[:40]
