"""Bearer-key auth on every API route (including ones added later) and CORS only for configured origins."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.service.conftest import API_KEY as KEY
from tests.service.conftest import CORS_ORIGIN as ORIGIN

OPEN = {"/healthz", "/readyz", "/metrics"}


@pytest.fixture(scope="module")
def secured(keyed_server):
    """The shared keyed server: CLIP_API_KEY, CLIP_CORS_ORIGINS and a 100,000-byte body cap."""
    return keyed_server


def _operations(url: str) -> list[tuple[str, str]]:
    spec = httpx.get(url + "/openapi.json").json()
    ops = []
    for path, methods in spec["paths"].items():
        concrete = path.replace("{name}", "x").replace("{model}", "m").replace("{model_id}", "m")
        for method in methods:
            ops.append((method.upper(), concrete))
    return ops


def test_every_api_route_but_health_and_metrics_needs_the_key(secured):
    ops = _operations(secured.url)
    assert any(p.startswith("/embed") for _, p in ops) and any(p.startswith("/labelsets") for _, p in ops)
    for method, path in ops:
        r = httpx.request(method, secured.url + path, json={})
        if path in OPEN:
            assert r.status_code == 200, (method, path, r.status_code)
        else:
            assert r.status_code == 401, (method, path, r.status_code, r.text[:200])
            assert r.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Bearer {KEY}x", f"Bearer {KEY[:-1]}", f"Basic {KEY}",
                                    KEY, "Bearer", "Bearer \u00e9t\u00e9".encode()])
def test_wrong_or_missing_key_is_401(secured, header):
    headers = {"Authorization": header} if header is not None else {}
    r = httpx.post(secured.url + "/embed/text", json={"texts": ["a"]}, headers=headers)
    assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"


def test_the_right_key_passes(secured):
    auth = {"Authorization": f"Bearer {KEY}"}
    assert httpx.post(secured.url + "/embed/text", json={"texts": ["a"]}, headers=auth).status_code == 200
    assert httpx.get(secured.url + "/labelsets", headers=auth).status_code == 200
    assert httpx.get(secured.url + "/info", headers=auth).status_code == 200


def test_docs_pages_stay_open(secured):
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert httpx.get(secured.url + path).status_code == 200, path


def test_cors_allows_only_the_configured_origin(secured):
    pre = httpx.options(secured.url + "/embed/text", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in pre.headers["access-control-allow-headers"].lower()
    evil = httpx.options(secured.url + "/embed/text", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in evil.headers
    auth = {"Authorization": f"Bearer {KEY}"}
    ok = httpx.post(secured.url + "/embed/text", json={"texts": ["a"]}, headers={**auth, "Origin": ORIGIN})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.post(secured.url + "/embed/text", json={"texts": ["a"]}, headers={**auth, "Origin": "https://x.y"})
    assert "access-control-allow-origin" not in other.headers


def test_early_refusals_carry_cors_headers_too(secured):
    """CORS is the outermost layer, so a browser app can read a 413 from the body cap or a 401."""
    big = httpx.post(secured.url + "/embed/text", content=b"x" * 200_000,
                     headers={"Origin": ORIGIN, "content-type": "application/json"})
    assert big.status_code == 413 and big.headers["access-control-allow-origin"] == ORIGIN
    denied = httpx.post(secured.url + "/embed/text", json={"texts": ["a"]}, headers={"Origin": ORIGIN})
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == ORIGIN
    assert "retry-after" in denied.headers.get("access-control-expose-headers", "").lower()


def test_cors_is_off_by_default(server):
    r = httpx.post(server.url + "/embed/text", json={"texts": ["a"]}, headers={"Origin": ORIGIN})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    pre = httpx.options(server.url + "/embed/text", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in pre.headers


def test_public_paths_are_configurable():
    """CLIP_PUBLIC_PATHS=/healthz also protects /readyz and /metrics (in process: auth runs before the model)."""
    app = create_app(Settings(api_key=KEY, public_paths=["/healthz"]))
    client = TestClient(app)  # no `with`: the model is not loaded, which auth does not need
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 401 and client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_routes_added_later_are_protected_too():
    """The key is checked on the app, not per router: a new route needs nothing to be protected."""
    app = create_app(Settings(api_key=KEY))

    @app.post("/some/new/route")
    async def new_route() -> dict:
        return {"ok": True}

    client = TestClient(app)
    assert client.post("/some/new/route").status_code == 401
    assert client.post("/some/new/route", headers={"Authorization": f"Bearer {KEY}"}).json() == {"ok": True}
