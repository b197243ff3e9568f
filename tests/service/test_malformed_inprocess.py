"""The malformed-input corpus of tests/service/test_malformed.py, replayed in-process against the app on a fake
backend: every refusal (the 4xx entries) is decided by the request parsing (service/inputs.py, the routes'
limit checks), not by the model, so it must come out the same without one. This runs in a few seconds and in
the test's own process, where the mutation check (make mutation) sees the parsing code; test_malformed.py
keeps checking the same corpus through the real server."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.service.fake_backend import ready_client
from tests.service.server import metric_value
from tests.service.test_malformed import FILES, JSON, MULTIPART, RAW, _multipart

REFUSED_JSON = {name: case for name, case in JSON.items() if case[2] != 200}


@pytest.fixture(scope="module")
def app_client():
    with ready_client(Settings()) as client_and_backend:
        yield client_and_backend


def model_work(client: TestClient) -> tuple[float, ...]:
    text = client.get("/metrics").text
    return tuple(metric_value(text, "clip_preprocess_seconds_count", modality=m) for m in ("text", "image"))


def check_refused(client: TestClient, backend, send, status: int, name: str) -> None:
    """`send()` is refused with `status` in the usual error shape, before any text is tokenised, any image
    decoded or anything encoded."""
    work, encoded = model_work(client), list(backend.encoded)
    r = send()
    assert r.status_code == status, (name, r.text[:300])
    error = r.json()["error"]
    assert error["type"] and error["message"] and len(error["message"]) < 500, error
    if status != 413 or "bomb" not in name:  # a bomb is refused from its header, inside the decode step
        assert model_work(client) == work, f"{name}: tokenised or decoded before the refusal"
    assert backend.encoded == encoded, f"{name}: encoded before the refusal"


@pytest.mark.parametrize("name", [n for n in FILES if FILES[n][1] != 200])
def test_malformed_file(app_client, name):
    client, backend = app_client
    data, status = FILES[name]
    check_refused(client, backend, lambda: client.post("/embed/image", files=[("file", ("upload", data))]), status,
                  name)


@pytest.mark.parametrize("name", list(REFUSED_JSON))
def test_malformed_json(app_client, name):
    client, backend = app_client
    path, body, status = REFUSED_JSON[name]
    check_refused(client, backend, lambda: client.post(path, json=body), status, name)


@pytest.mark.parametrize("name", list(RAW))
def test_malformed_raw_json(app_client, name):
    client, backend = app_client
    method, path, body, status = RAW[name]
    send = lambda: client.request(method, path, content=body, headers={"content-type": "application/json"})  # noqa
    check_refused(client, backend, send, status, name)
    if path.startswith("/v1/"):
        assert send().json()["error"]["code"] == "invalid_input"


@pytest.mark.parametrize("name", list(MULTIPART))
def test_malformed_multipart_fields(app_client, name):
    client, backend = app_client
    fields, charset, status = MULTIPART[name]
    body, headers = _multipart(fields, charset)
    check_refused(client, backend, lambda: client.post("/classify", content=body, headers=headers), status, name)


def test_the_app_still_answers_after_the_corpus(app_client):
    client, backend = app_client
    r = client.post("/embed/text", json={"texts": ["fresh"]})
    assert r.status_code == 200 and len(r.json()["embeddings"]) == 1
    assert metric_value(client.get("/metrics").text, "clip_requests_total", status="500") == 0
