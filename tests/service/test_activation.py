"""/classify scores with the model's own activation: a SigLIP-style model (sigmoid loss: a learned logit_bias) gets one
sigmoid per label, as open_clip computes it; CLIP (the bundled model) the softmax over the labels; `scores: cosine`
the raw cosines. Real servers over HTTP; open_clip's own arithmetic as the reference."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from tests.conftest import SIGLIP_LOGIT_BIAS, SIGLIP_LOGIT_SCALE
from tests.service.conftest import encode, shape_image
from tests.service.server import ServerProcess

IMAGES = [shape_image("red", "circle"), shape_image("blue", "square", seed=1), shape_image("green", "star", seed=2)]
LABELS = ["red circle", "blue square", "green star", "pink heart", "yellow triangle"]
PROMPTS = [f"a photo of a {label}." for label in LABELS]  # the default template, one prompt per label


@pytest.fixture(scope="module")
def siglip_server(siglip_dir, tmp_path_factory):
    """The real server (torch backend) on the SigLIP-style checkpoint directory."""
    proc = ServerProcess({"CLIP_MODEL": str(siglip_dir)}, tmp_path_factory.mktemp("siglip") / "server.log")
    yield proc.wait_ready()
    proc.stop()


def _b64(im) -> str:
    return base64.b64encode(encode(im)).decode()


def _by_label(body: dict) -> np.ndarray:
    """[N, C] scores of an answer, in LABELS order (answers rank labels best first)."""
    return np.array([[{x["label"]: x["score"] for x in ranked}[label] for label in LABELS]
                     for ranked in body["results"]])


def _classify(server, **fields) -> dict:
    r = httpx.post(server.url + "/classify", json={"images": [_b64(im) for im in IMAGES], **fields}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_sigmoid_model_scores_each_label_as_open_clip_does(siglip_server, siglip, open_clip_head):
    _, expected = open_clip_head(siglip, IMAGES, PROMPTS)
    body = _classify(siglip_server, labels=LABELS)
    assert body["activation"] == "sigmoid" and body["scores"] == "probability"
    got = _by_label(body)
    # rtol: the scale (120) times the cosines' difference between the server's PIL/numpy preprocessing and
    # open_clip's torchvision transform; a clamped scale (100) or a softmax misses by far more
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=1e-7)
    assert ((expected > 0.02) & (expected < 0.98)).sum() >= 3, "the reference is not saturated: a real comparison"
    assert np.abs(got.sum(axis=1) - 1).min() > 0.1, "independent per label: an image's scores do not sum to 1"


def test_a_stored_label_set_scores_with_the_models_activation(siglip_server, siglip, open_clip_head):
    cosines, expected = open_clip_head(siglip, IMAGES, PROMPTS)
    r = httpx.put(siglip_server.url + "/labelsets/shapes", json={"labels": LABELS}, timeout=60)
    assert r.status_code == 200, r.text
    body = _classify(siglip_server, labelset="shapes")
    assert body["activation"] == "sigmoid"
    np.testing.assert_allclose(_by_label(body), expected, rtol=2e-3, atol=1e-7)
    raw = _classify(siglip_server, labelset="shapes", scores="cosine")
    np.testing.assert_allclose(_by_label(raw), cosines, atol=2e-5)


def test_scores_cosine_are_the_raw_cosines_json_and_multipart(siglip_server, siglip, open_clip_head):
    cosines, _ = open_clip_head(siglip, IMAGES, PROMPTS)
    body = _classify(siglip_server, labels=LABELS, scores="cosine", top_k=2)
    assert body["scores"] == "cosine" and body["activation"] == "sigmoid"
    best_two = np.sort(cosines, axis=1)[:, ::-1][:, :2]  # top_k ranks the cosines too
    np.testing.assert_allclose([[x["score"] for x in ranked] for ranked in body["results"]], best_two, atol=2e-5)
    form = httpx.post(siglip_server.url + "/classify", files=[("file", ("a.png", encode(im))) for im in IMAGES],
                      data={"labels": LABELS, "scores": "cosine"}, timeout=60)
    assert form.status_code == 200, form.text
    assert form.json()["scores"] == "cosine"
    np.testing.assert_allclose(_by_label(form.json()), cosines, atol=2e-5)


def test_info_reports_the_sigmoid_head_unclamped(siglip_server):
    info = httpx.get(siglip_server.url + "/info").json()
    assert info["activation"] == "sigmoid"
    assert info["logit_scale"] == pytest.approx(SIGLIP_LOGIT_SCALE, rel=1e-5)  # above CLIP's clamp at 100
    assert info["logit_bias"] == pytest.approx(SIGLIP_LOGIT_BIAS)


def test_the_bundled_clip_model_still_answers_a_softmax(server, bundled, open_clip_head):
    cosines, expected = open_clip_head(bundled, IMAGES, PROMPTS)
    body = _classify(server, labels=LABELS)
    assert body["activation"] == "softmax" and body["scores"] == "probability"
    got = _by_label(body)
    np.testing.assert_allclose(got.sum(axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(_by_label(_classify(server, labels=LABELS, scores="cosine")), cosines, atol=2e-5)
    info = httpx.get(server.url + "/info").json()
    assert info["activation"] == "softmax" and info["logit_bias"] is None


@pytest.mark.parametrize("request_kw", [
    {"json": {"image": _b64(IMAGES[0]), "labels": LABELS, "scores": "logits"}},
    {"json": {"image": _b64(IMAGES[0]), "labels": LABELS, "scores": None}},
    {"files": [("file", ("a.png", encode(IMAGES[0])))], "data": {"labels": LABELS, "scores": "softmax"}},
    {"files": [("file", ("a.png", encode(IMAGES[0])))], "data": {"labels": LABELS, "scores": ["cosine", "cosine"]}},
], ids=["json", "json-null", "multipart", "multipart-twice"])
def test_an_unknown_scores_value_is_a_422_in_the_error_shape(server, request_kw):
    r = httpx.post(server.url + "/classify", **request_kw)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert set(r.json()) == {"error"} and error["type"] == "invalid_request" and "scores" in error["message"]
    assert "probability" in error["message"] or "once" in error["message"], "names the values it takes"


def test_the_python_client_asks_for_cosines_and_reads_the_activation(siglip_server, siglip, open_clip_head):
    from service.client import Client

    cosines, expected = open_clip_head(siglip, IMAGES[:1], PROMPTS)
    with Client(siglip_server.url) as clip:
        probs = clip.classify(IMAGES[0], LABELS)
        raw = clip.classify(IMAGES[0], LABELS, scores="cosine")
        info = clip.info()
    assert (probs.activation, probs.scores, raw.scores, info.activation) == ("sigmoid", "probability", "cosine",
                                                                              "sigmoid")
    np.testing.assert_allclose([{x.label: x.score for x in raw.results[0]}[k] for k in LABELS], cosines[0], atol=2e-5)
    np.testing.assert_allclose([{x.label: x.score for x in probs.results[0]}[k] for k in LABELS], expected[0],
                               rtol=2e-3, atol=1e-7)
