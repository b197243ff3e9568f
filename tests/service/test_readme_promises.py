"""README promises no other test file pins down: answers name their model and fingerprint, /classify's default
template, and /v1 accepting (and ignoring) `user`."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from tests.service.conftest import encode, shape_image

LABELS = ["red circle", "blue square", "green star"]


@pytest.fixture(scope="module")
def info(server) -> dict:
    return httpx.get(server.url + "/info", timeout=30).json()


def test_every_answer_names_the_model_and_its_fingerprint(server, info):
    """"Every response carries the model id and its fingerprint": the ones that carry vectors or scores."""
    image = encode(shape_image("red", "circle"))
    answers = {
        "/embed/image": httpx.post(server.url + "/embed/image", files=[("file", ("a.png", image))]),
        "/embed/image json": httpx.post(server.url + "/embed/image",
                                        json={"images": [base64.b64encode(image).decode()]}),
        "/embed/text": httpx.post(server.url + "/embed/text", json={"texts": ["a red circle"]}),
        "/classify": httpx.post(server.url + "/classify", files=[("file", ("a.png", image))],
                                data={"labels": LABELS}),
    }
    for name, r in answers.items():
        assert r.status_code == 200, (name, r.text)
        assert (r.json()["model"], r.json()["fingerprint"]) == (info["model"], info["fingerprint"]), name
    assert len(info["fingerprint"]) == 16 and info["model"] == "shapes-rn-s"
    put = httpx.put(server.url + "/labelsets/readme-promise", json={"labels": LABELS})
    try:
        assert put.status_code == 200 and put.json()["fingerprint"] == info["fingerprint"], put.text
    finally:
        httpx.delete(server.url + "/labelsets/readme-promise")
    openai = httpx.post(server.url + "/v1/embeddings", json={"model": "clip", "input": "a red circle"})
    assert openai.json()["model"] == info["model"]


def test_classify_without_templates_uses_a_photo_of_a(server):
    """"default `a photo of a {}.`": leaving templates out scores exactly as sending that one template."""
    image = ("a.png", encode(shape_image("blue", "square", seed=3)))
    default = httpx.post(server.url + "/classify", files=[("file", image)], data={"labels": LABELS}).json()
    explicit = httpx.post(server.url + "/classify", files=[("file", image)],
                          data={"labels": LABELS, "templates": "a photo of a {}."}).json()
    other = httpx.post(server.url + "/classify", files=[("file", image)],
                       data={"labels": LABELS, "templates": "a drawing of a {}."}).json()
    scores = [np.array([{x["label"]: x["score"] for x in r["results"][0]}[k] for k in LABELS])
              for r in (default, explicit, other)]
    # relative tolerances: most scores are tiny (~1e-6); float noise moves them by ~1e-6 of themselves, another
    # template by ~4 % (measured)
    assert np.allclose(scores[0], scores[1], rtol=1e-4, atol=0), scores
    assert not np.allclose(scores[0], scores[2], rtol=1e-3, atol=0), "the premise: another template scores otherwise"


def test_openai_user_is_accepted_and_ignored(server):
    body = {"model": "clip", "input": ["a red circle"], "encoding_format": "float"}
    plain = httpx.post(server.url + "/v1/embeddings", json=body)
    tagged = httpx.post(server.url + "/v1/embeddings", json={**body, "user": "user-1234"})
    assert plain.status_code == tagged.status_code == 200, tagged.text
    assert tagged.json()["data"] == plain.json()["data"] and tagged.json()["usage"] == plain.json()["usage"]
