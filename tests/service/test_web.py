"""The demo page and the docs pages over plain HTTP: every asset they name is local and served (the browser
tests in test_browser.py then check that they render)."""

from __future__ import annotations

import re
from urllib.parse import urljoin

import httpx
import pytest

from service.web import STATIC

ASSET = re.compile(r"""(?:src|href)=["']([^"']+)["']""")


@pytest.mark.parametrize("page", ["/", "/docs", "/redoc"])
def test_pages_name_only_local_assets_and_all_are_served(server, page):
    r = httpx.get(server.url + page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"], "the browser may load nothing foreign"
    assets = ASSET.findall(r.text)
    assert assets, "the page names its scripts and styles"
    for asset in assets:
        assert not re.match(r"^(https?:)?//", asset), f"{page} names an external asset: {asset}"
        url = urljoin(server.url + page, asset)
        if url.startswith(server.url + "/static"):
            assert httpx.get(url).status_code == 200, url


def test_demo_page_sources_name_no_external_host():
    for path in STATIC.glob("*"):
        text = path.read_text()
        assert not re.search(r"https?://", text), f"{path.name} refers to an external URL"


def test_docs_bundles_are_served(server):
    for name, kind in [("swagger-ui-bundle.js", "javascript"), ("swagger-ui.css", "css"),
                       ("redoc.standalone.js", "javascript")]:
        r = httpx.get(f"{server.url}/static/docs/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"] and len(r.content) > 10_000
