"""POST /embed/text's inputs in-process (service/inputs.py), on the app with a fake backend: the content type and
the text count, with the words a client reads. The real server's tests check the same end to end; these run in a
second, in the process the mutation check (make mutation) watches."""

from __future__ import annotations

import json

import pytest

from service.settings import Settings
from tests.service.fake_backend import ready_client

MAX_TEXTS = 3


@pytest.fixture(scope="module")
def client():
    with ready_client(Settings(max_texts_per_request=MAX_TEXTS)) as (client, _):
        yield client


def test_json_with_or_without_its_content_type(client):
    r = client.post("/embed/text", content=json.dumps({"texts": ["a"]}))  # no content type: read as JSON
    assert r.status_code == 200 and len(r.json()["embeddings"]) == 1, r.text
    r = client.post("/embed/text", content=b"a", headers={"content-type": "text/plain"})
    assert r.status_code == 415, r.text
    assert r.json()["error"]["message"] == 'send application/json: {"texts": [...]}'


def test_text_counts(client):
    r = client.post("/embed/text", json={"texts": ["a", "b", "c"]})
    assert r.status_code == 200 and len(r.json()["embeddings"]) == MAX_TEXTS, r.text
    r = client.post("/embed/text", json={"texts": ["a", "b", "c", "d"]})
    assert r.status_code == 413, r.text
    assert r.json()["error"]["message"] == \
        f"{MAX_TEXTS + 1} texts in one request; the limit is {MAX_TEXTS} (CLIP_MAX_TEXTS_PER_REQUEST)"
