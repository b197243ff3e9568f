"""POST /v1/embeddings' input rules in-process, on the app with a fake backend (tests/service/fake_backend.py):
which `input` strings are images and which are texts (with and without image URLs), the `model` names and
`dimensions` it takes, and its refusals in OpenAI's shape. The same rules through the real server and the openai
client are tests/service/test_openai_compat.py's and test_openai_urls.py's; these run in seconds, in the process
the mutation check (make mutation) watches."""

from __future__ import annotations

import base64
import itertools
import json
import logging

import pytest

from service.settings import Settings
from tests.service.fake_backend import COLOURS, png, ready_client

MAX_TEXTS, MAX_IMAGES = 4, 3
FRESH = "data:image/png;base64," + base64.b64encode(png(COLOURS["fresh"])).decode()  # the backend names it "fresh"
_SERIAL = itertools.count()


def new_text() -> str:
    """A text no earlier request sent: the server caches text embeddings, and a cached text is never encoded."""
    return f"text {next(_SERIAL)}"


class Fetcher:
    """Stands in for service/urls.py's UrlFetcher: every URL is a "late"-coloured PNG; records what it fetched."""

    def __init__(self):
        self.fetched: list[str] = []

    async def fetch(self, url: str, budget) -> bytes:
        self.fetched.append(url)
        return png(COLOURS["late"])


@pytest.fixture(scope="module")
def app():
    with ready_client(Settings(max_texts_per_request=MAX_TEXTS, max_images_per_request=MAX_IMAGES)) as client_backend:
        yield client_backend


def embed(app, items, urls: Fetcher | None = None, **fields):
    """POST /v1/embeddings with `input` = items; returns (status, body, what the encoders computed for it)."""
    client, backend = app
    client.app.state.url_fetcher = urls  # what CLIP_ALLOW_URLS sets up (None: image URLs are off)
    try:
        before = len(backend.encoded)
        r = client.post("/v1/embeddings", json={"model": "clip", "input": items, **fields})
    finally:
        client.app.state.url_fetcher = None
    return r.status_code, r.json(), backend.encoded[before:]


def refused(app, items, status: int, code: str, param: str | None, **fields) -> str:
    """The request is refused in OpenAI's shape, before anything is encoded; returns the message."""
    got, body, encoded = embed(app, items, **fields)
    assert got == status and encoded == [], (got, body)
    error = body["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param), error
    return error["message"]


# --- images and texts ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("uri", [FRESH, "  " + FRESH + "\n", "DATA:" + FRESH[5:], "Data:" + FRESH[5:]])
def test_data_uris_are_images_whatever_their_case_and_the_spaces_around_them(app, uri):
    text = new_text()
    status, body, encoded = embed(app, [text, uri])
    assert status == 200 and sorted(encoded) == ["fresh", text], (body, encoded)
    assert [d["index"] for d in body["data"]] == [0, 1]


@pytest.mark.parametrize("url", ["https://img.example/cat.png", "http://img.example/cat.png", "HTTPS://IMG.EXAMPLE/x"])
def test_urls_are_texts_when_the_server_fetches_no_urls(app, url):
    """Without CLIP_ALLOW_URLS a URL is text, embedded as such (never fetched, never refused)."""
    status, body, encoded = embed(app, [url])
    assert status == 200 and encoded == [url], (body, encoded)


@pytest.mark.parametrize("url", ["https://img.example/cat.png", "http://img.example/cat.png",
                                 " HTTPS://IMG.EXAMPLE/x "])
def test_urls_are_images_when_the_server_fetches_urls(app, url):
    fetcher = Fetcher()
    text = new_text()
    status, body, encoded = embed(app, [text, url], urls=fetcher)
    assert status == 200 and sorted(encoded) == ["late", text] and fetcher.fetched == [url.strip()], (body, encoded)


@pytest.mark.parametrize("text", ["see https://img.example/cat.png", "https://img.example/a cat.png", "ftp://x/y.png",
                                  "https://", "a data: URI"])
def test_what_is_not_one_http_url_stays_text_even_with_urls_on(app, text):
    fetcher = Fetcher()
    status, body, encoded = embed(app, [text], urls=fetcher)
    assert status == 200 and encoded == [text] and fetcher.fetched == [], (body, encoded)


def test_a_bad_image_is_named_by_its_place_in_input(app):
    message = refused(app, ["a", "b", "data:image/png;base64,!!"], 400, "invalid_input", "input")
    assert message == "input[2]: not valid base64", message
    message = refused(app, ["a", "data:text/plain;base64,aGk="], 415, "unsupported_media_type", "input")
    assert message.startswith("input[1]: data URI of type 'text/plain'"), message


# --- counts ----------------------------------------------------------------------------------------------------------
def test_texts_and_images_are_counted_apart_each_up_to_its_limit(app):
    status, body, encoded = embed(app, [str(i) for i in range(MAX_TEXTS)] + [FRESH] * MAX_IMAGES)
    assert status == 200 and len(body["data"]) == MAX_TEXTS + MAX_IMAGES, body
    message = refused(app, [str(i) for i in range(MAX_TEXTS + 1)], 413, "payload_too_large", None)
    assert message == f"{MAX_TEXTS + 1} texts in one request; the limit is {MAX_TEXTS} (CLIP_MAX_TEXTS_PER_REQUEST)"
    message = refused(app, ["a"] + [FRESH] * (MAX_IMAGES + 1), 413, "payload_too_large", None)
    assert message == f"{MAX_IMAGES + 1} images in one request; the limit is {MAX_IMAGES} (CLIP_MAX_IMAGES_PER_REQUEST)"


@pytest.mark.parametrize("items", [[], ""])
def test_no_input_is_refused(app, items):
    if items == "":  # one empty string is one (empty) text
        assert embed(app, items)[0] == 200
        return
    assert refused(app, items, 422, "invalid_request", "input") == "input: give at least one string"


@pytest.mark.parametrize("items", [[1, 2, 3], [[1, 2]], [[3], [4, 5]]])
def test_token_arrays_are_refused_with_the_reason(app, items):
    message = refused(app, items, 422, "invalid_request", "input")
    assert message == ("input: token arrays are not supported (this server tokenises with the model's own "
                       "tokenizer); send strings. LangChain: OpenAIEmbeddings(check_embedding_ctx_length=False)")


# --- model and dimensions ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["named", "n" * 16, "clip"])  # the fake backend's id, its fingerprint, the alias
def test_the_model_may_be_named_by_its_id_its_fingerprint_or_clip(app, model):
    assert embed(app, ["a"], model=model)[0] == 200


@pytest.mark.parametrize("model", ["CLIP", "named ", "n" * 15, "gpt-4", ""])
def test_any_other_model_is_404_naming_what_is_served(app, model):
    message = refused(app, ["a"], 404, "model_not_found", "model", model=model)
    assert message.startswith(f"The model `{model}` does not exist on this server. It serves `named` "
                              f"(fingerprint {'n' * 16})"), message


def test_base64_encoding_is_passed_on(app):
    status, body, _ = embed(app, [new_text()], encoding_format="base64")
    assert status == 200 and isinstance(body["data"][0]["embedding"], str), body
    status, body, _ = embed(app, [new_text()], encoding_format="float")
    assert status == 200 and isinstance(body["data"][0]["embedding"], list), body


def test_dimensions_up_to_the_models(app):
    status, body, _ = embed(app, ["a"], dimensions=8)  # the fake backend's embed_dim
    assert status == 200 and len(body["data"][0]["embedding"]) == 8, body
    status, body, _ = embed(app, ["a"], dimensions=3)
    assert status == 200 and len(body["data"][0]["embedding"]) == 3, body
    message = refused(app, ["a"], 422, "invalid_request", "dimensions", dimensions=9)
    assert message == "dimensions: 9 is more than the model's 8", message


# --- the body --------------------------------------------------------------------------------------------------------
def test_json_with_or_without_its_content_type(app):
    client, _ = app
    body = json.dumps({"model": "clip", "input": [new_text()]})
    assert client.post("/v1/embeddings", content=body).status_code == 200  # no content type: read as JSON
    r = client.post("/v1/embeddings", content=body, headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type", r.text
    assert r.json()["error"]["message"] == 'send application/json: {"model": "clip", "input": [...]}'


def test_the_access_log_counts_the_inputs(app, caplog):
    with caplog.at_level(logging.INFO, logger="service.access"):
        assert embed(app, [new_text(), FRESH, new_text()])[0] == 200
    (line,) = [json.loads(r.getMessage()) for r in caplog.records if r.name == "service.access"
               and '"/v1/embeddings"' in r.getMessage()]
    assert line["status"] == 200 and line["items"] == 3, line
