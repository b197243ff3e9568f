"""The tokens the model sees are open_clip's, however long or odd the text (issue: a 100-character cut of
runs of letters and a 16-characters-per-token cut changed embeddings, e.g. cosine 0.96 for "x" * 500)."""

from __future__ import annotations

import httpx
import numpy as np
import torch
from open_clip.tokenizer import SimpleTokenizer

from service.backends.base import Backend

LONG = ["x" * 500, " " * 3000 + "a red circle", "red " * 300, "a photo of a " + "very " * 200 + "red circle",
        "\n" * 2000 + "blue square", "😀" * 300, "&amp;" * 3 + "green star " * 50]


class _Tokenizing(Backend):
    """Only what tokenize() needs: open_clip's own tokenizer, as the torch and export backends hold it."""

    def __init__(self, context_length: int):
        self.context_length, self.tokenizer = context_length, SimpleTokenizer(context_length=context_length)

    def encode_image(self, pixels):  # pragma: no cover - not used
        raise NotImplementedError

    def encode_text(self, tokens):  # pragma: no cover - not used
        raise NotImplementedError


def test_backend_tokens_equal_open_clips_for_long_texts():
    for length in (77, 24):
        backend = _Tokenizing(length)
        assert np.array_equal(backend.tokenize(LONG), backend.tokenizer(LONG).numpy()), length


def test_served_text_embeddings_equal_the_model_on_open_clips_tokens(server, bundled):
    r = httpx.post(server.url + "/embed/text", json={"texts": LONG}, timeout=60)
    assert r.status_code == 200, r.text
    with torch.no_grad():
        want = bundled.model.encode_text(bundled.tokenizer(LONG), normalize=True).numpy()
    cos = (np.array(r.json()["embeddings"]) * want).sum(axis=1)
    assert cos.min() > 0.9999, dict(zip((t[:20] for t in LONG), cos.round(4)))
