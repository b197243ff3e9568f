"""The server's embeddings and scores equal the in-process model's (open_clip transform and classifier)."""

from __future__ import annotations

import httpx
import numpy as np
import torch
from open_clip import build_zero_shot_classifier
from PIL import Image

from models.preprocess import eval_transform
from tests.service.conftest import encode, shape_image


def _in_process(bundled, images: list[Image.Image]) -> np.ndarray:
    tf = eval_transform(bundled.preprocess)
    with torch.no_grad():
        return bundled.model.encode_image(torch.stack([tf(i.convert("RGB")) for i in images]),
                                          normalize=True).numpy()


def _served(server, blobs: list[bytes]) -> np.ndarray:
    r = httpx.post(server.url + "/embed/image", files=[("file", (f"{i}", b)) for i, b in enumerate(blobs)],
                   timeout=30)
    assert r.status_code == 200, r.text
    return np.array(r.json()["embeddings"])


def test_real_photos_png_match_in_process_model(server, bundled, photos):
    images = [Image.fromarray(a) for a in photos.values()]
    served = _served(server, [encode(i, "PNG") for i in images])
    ref = _in_process(bundled, images)
    cos = (served * ref).sum(axis=1)
    assert cos.min() >= 0.999, cos


def test_real_photos_jpeg_reduced_decoding_stays_close(server, bundled, photos):
    """Large JPEGs are decoded at reduced size (Pillow draft); the server keeps cosine >= 0.99 of full decode."""
    images = [Image.fromarray(a).resize((a.shape[1] * 3, a.shape[0] * 3), Image.BICUBIC) for a in photos.values()]
    blobs = [encode(i, "JPEG", quality=92) for i in images]
    full = _in_process(bundled, [Image.open(__import__("io").BytesIO(b)) for b in blobs])
    cos = (_served(server, blobs) * full).sum(axis=1)
    assert cos.min() >= 0.99, cos


def test_classify_matches_open_clip_zero_shot_classifier(server, bundled):
    labels = ["red circle", "blue square", "green star", "yellow heart", "pink cross"]
    templates = ["a photo of a {}.", "a drawing of a {}.", "there is a {}."]
    img = shape_image("green", "star", seed=5)
    with torch.no_grad():
        weights = build_zero_shot_classifier(bundled.model, bundled.tokenizer, labels, templates)  # [D, C]
    emb = _in_process(bundled, [img])
    logits = bundled.logit_scale * emb @ weights.numpy()
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    r = httpx.post(server.url + "/classify", files=[("file", ("s.png", encode(img)))],
                   data={"labels": labels, "templates": templates})
    got = {x["label"]: x["score"] for x in r.json()["results"][0]}
    assert [x["label"] for x in r.json()["results"][0]] == [labels[i] for i in np.argsort(-probs[0])]
    assert np.allclose([got[label] for label in labels], probs[0], atol=1e-4)
