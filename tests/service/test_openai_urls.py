"""/v1/embeddings and URL strings: without CLIP_ALLOW_URLS an https URL is just text (embedded like /embed/text of
the same string); with it, a string that is one https URL is fetched and embedded as an image (like /embed/image of
the bytes it serves). Checked by embedding, against a local HTTPS host with its own CA."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from tests.service.conftest import encode, shape_image
from tests.service.https_server import ImageHost
from tests.service.server import ServerProcess

PNG = encode(shape_image("blue", "square"))
SENTENCE = "a red circle"


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = ImageHost(tmp_path_factory.mktemp("tls"), {"/blue.png": (200, {"Content-Type": "image/png"}, PNG)})
    yield h
    h.close()


@pytest.fixture(scope="module")
def url_server(bundled_dir, host, tmp_path_factory):
    proc = ServerProcess({"CLIP_MODEL": str(bundled_dir), "CLIP_ALLOW_URLS": "true",
                          "CLIP_URL_ALLOWED_HOSTS": "localhost", "CLIP_URL_CA_BUNDLE": str(host.ca),
                          "CLIP_URL_ALLOW_LOOPBACK_FOR_TESTS": "true"},
                         tmp_path_factory.mktemp("v1-urls") / "server.log").wait_ready()
    yield proc
    proc.stop()


def v1(server: ServerProcess, items: list[str]) -> tuple[np.ndarray, int]:
    r = httpx.post(server.url + "/v1/embeddings", json={"model": "clip", "input": items}, timeout=60)
    assert r.status_code == 200, r.text[:300]
    body = r.json()
    assert [d["index"] for d in body["data"]] == list(range(len(items)))
    return np.array([d["embedding"] for d in body["data"]]), body["usage"]["prompt_tokens"]


def texts(server: ServerProcess, items: list[str]) -> np.ndarray:
    r = httpx.post(server.url + "/embed/text", json={"texts": items}, timeout=60)
    assert r.status_code == 200, r.text[:300]
    return np.array(r.json()["embeddings"])


def image(server: ServerProcess, data: bytes) -> np.ndarray:
    r = httpx.post(server.url + "/embed/image", json={"images": [base64.b64encode(data).decode()]}, timeout=60)
    assert r.status_code == 200, r.text[:300]
    return np.array(r.json()["embeddings"])[0]


def test_without_urls_an_https_url_is_text(server, host):
    url = host.url("/blue.png")  # reachable, and an image: it must still not be fetched
    got, tokens = v1(server, [url, SENTENCE])
    want = texts(server, [url, SENTENCE])
    assert np.allclose(got, want, atol=1e-5), "with CLIP_ALLOW_URLS off, a URL string is embedded as text"
    _, sentence_tokens = v1(server, [SENTENCE])
    assert tokens > sentence_tokens  # the URL's tokens count: it was tokenised as text
    assert float(got[0] @ image(server, PNG)) < 0.9  # and it is far from the image the URL points at


def test_with_urls_an_https_url_is_an_image_and_other_strings_stay_text(url_server, host):
    url = host.url("/blue.png")
    mention = f"see {url} for a picture"  # not one URL: text
    got, tokens = v1(url_server, [SENTENCE, url, mention])
    assert np.allclose(got[1], image(url_server, PNG), atol=1e-5), "the URL was not embedded as its image"
    assert np.allclose(got[[0, 2]], texts(url_server, [SENTENCE, mention]), atol=1e-5)
    _, text_tokens = v1(url_server, [SENTENCE, mention])
    assert tokens == text_tokens  # images count no tokens


def test_with_urls_a_refused_url_names_its_place_in_input(url_server):
    body = {"model": "clip", "input": [SENTENCE, "https://evil.example/x.png"]}
    r = httpx.post(url_server.url + "/v1/embeddings", json=body, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "url_refused" and error["param"] == "input", error
    assert error["message"].startswith("input[1]: ") and "CLIP_URL_ALLOWED_HOSTS" in error["message"], error
