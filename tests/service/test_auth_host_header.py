"""A forged Host header cannot open a protected route (GHSA-86qp-5c8j-p5mr): the key check reads the raw ASGI
path, and the dependency floor excludes the Starlette versions that rebuilt request.url from the Host header."""

from __future__ import annotations

import asyncio
import tomllib
from importlib.metadata import version

import httpx
import pytest
from packaging.requirements import Requirement
from starlette.datastructures import URL
from starlette.requests import Request

from service.app import create_app
from service.auth import is_public, require_api_key
from service.errors import Unauthorized
from service.settings import Settings
from tests.service.server import ROOT

KEY = "host-header-test-key"
PUBLIC = {"/healthz", "/readyz", "/metrics"}
FORGED_HOSTS = ["x/healthz?", "x/metrics#", "x/readyz?a=", "x/healthz", "x/healthz#", "x:80/metrics?",
                "localhost/readyz?"]


def forged_request(path: str, host: str) -> Request:
    """A request for `path` whose request.url was rebuilt from `host`, as Starlette < 1.0.1 did it
    (f"{scheme}://{host}{path}"): with host 'x/healthz?' its url.path is /healthz while the route is `path`."""
    app = create_app(Settings(api_key=KEY))
    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"host", host.encode())], "scheme": "http", "server": ("127.0.0.1", 8000), "app": app}
    request = Request(scope)
    request._url = URL(f"http://{host}{path}")  # what the vulnerable Starlette computed
    return request


@pytest.mark.parametrize("host", FORGED_HOSTS[:3])
def test_public_path_is_decided_from_the_raw_path_not_the_rebuilt_url(host):
    request = forged_request("/embed/text", host)
    assert request.url.path in PUBLIC, "the premise: the rebuilt URL points at a public path"
    assert not is_public(request)
    with pytest.raises(Unauthorized):
        asyncio.run(require_api_key(request))


def test_the_real_public_paths_stay_public():
    for path in PUBLIC:
        assert is_public(forged_request(path, "127.0.0.1:8000"))


def _dependency(name: str) -> Requirement:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (found,) = [Requirement(d) for d in deps if Requirement(d).name == name]
    return found


def test_dependency_floor_excludes_the_vulnerable_starlette():
    starlette = _dependency("starlette")
    for vulnerable in ("0.50.0", "0.52.1", "1.0.0"):
        assert not starlette.specifier.contains(vulnerable), vulnerable
    assert starlette.specifier.contains("1.0.1")
    for name in ("starlette", "fastapi"):  # and the versions this environment runs satisfy the floor
        assert _dependency(name).specifier.contains(version(name)), (name, version(name))


def _operations(url: str) -> list[tuple[str, str]]:
    spec = httpx.get(url + "/openapi.json", timeout=30).json()
    return [(method.upper(), path.replace("{name}", "x"))
            for path, methods in spec["paths"].items() for method in methods if path not in PUBLIC]


def test_forged_host_headers_get_401_on_every_protected_route(keyed_server):
    ops = _operations(keyed_server.url)
    expected = {("POST", "/embed/image"), ("POST", "/embed/text"), ("POST", "/classify"), ("GET", "/info"),
                ("PUT", "/labelsets/x"), ("DELETE", "/labelsets/x"), ("GET", "/labelsets/x"), ("GET", "/labelsets"),
                ("POST", "/v1/embeddings"), ("GET", "/v1/models")}
    assert expected <= set(ops), sorted(expected - set(ops))
    wrong = []
    with httpx.Client(base_url=keyed_server.url, timeout=30) as client:
        for method, path in ops:
            for host in FORGED_HOSTS:
                r = client.request(method, path, headers={"Host": host}, json={"texts": ["a"], "labels": ["a"]})
                if r.status_code != 401:
                    wrong.append((method, path, host, r.status_code, r.text[:100]))
    assert not wrong, wrong
