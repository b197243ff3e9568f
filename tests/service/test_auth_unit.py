"""CLIP_API_KEY in-process, on the app with a fake backend: which requests pass and which get 401. The same
rules through the real server are tests/service/test_auth_cors.py's; these run in a second, in the process the
mutation check (make mutation) watches."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.service.fake_backend import ready_client

KEY = "unit-test-key"


@pytest.fixture(scope="module")
def keyed():
    with ready_client(Settings(api_key=KEY)) as (client, _):
        yield client


def embed(client: TestClient, **headers: str):
    return client.post("/embed/text", json={"texts": ["a"]}, headers=headers)


@pytest.mark.parametrize("header", [f"Bearer {KEY}", f"bearer {KEY}", f"BEARER {KEY}", f"Bearer  {KEY} "])
def test_the_key_passes_whatever_the_schemes_case_and_the_spaces_around_it(keyed, header):
    r = embed(keyed, authorization=header)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", f"Bearer {KEY}x", f"Bearer {KEY[:-1]}",
                                    f"Basic {KEY}", KEY, f"Token {KEY}", f"Bearer{KEY}", f"Bearer {KEY.upper()}"])
def test_a_missing_or_wrong_key_is_401(keyed, header):
    r = embed(keyed, **({"authorization": header} if header is not None else {}))
    assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized", (header, r.text)
    assert "CLIP_API_KEY" in r.json()["error"]["message"] and r.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_the_public_paths_need_no_key(keyed, path):
    assert keyed.get(path).status_code == 200


@pytest.mark.parametrize("path", ["/", "/docs", "/redoc", "/docs/oauth2-redirect", "/openapi.json"])
def test_pages_outside_the_api_schema_need_no_key(keyed, path):
    """What browsers load without headers: the demo page and the API docs."""
    assert keyed.get(path).status_code == 200, path


@pytest.mark.parametrize("method,path", [("GET", "/info"), ("GET", "/labelsets"), ("GET", "/labelsets/x"),
                                         ("DELETE", "/labelsets/x"), ("POST", "/v1/embeddings")])
def test_other_api_routes_need_the_key(keyed, method, path):
    assert keyed.request(method, path).status_code == 401, (method, path)


def test_public_paths_are_a_setting():
    with ready_client(Settings(api_key=KEY, public_paths=["/readyz", "/info"])) as (client, _):
        assert client.get("/info").status_code == 200
        assert client.get("/metrics").status_code == 401 and client.get("/healthz").status_code == 401


def test_without_a_key_every_route_is_open():
    with ready_client(Settings()) as (client, _):
        assert embed(client).status_code == 200 and client.get("/info").status_code == 200
        assert embed(client, authorization="Bearer anything").status_code == 200
