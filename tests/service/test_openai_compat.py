"""The OpenAI-compatible API (/v1), driven by the official `openai` package exactly as users drive OpenAI."""

from __future__ import annotations

import asyncio
import base64
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest

from tests.service.conftest import API_KEY, encode, shape_image
from tests.service.gated import GatedServer
from tests.service.server import metric_value


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def info(server) -> dict:
    return httpx.get(server.url + "/info").json()


def reference_texts(server, texts: list[str]) -> np.ndarray:
    return np.array(httpx.post(server.url + "/embed/text", json={"texts": texts}).json()["embeddings"])


def reference_images(server, images: list[bytes]) -> np.ndarray:
    r = httpx.post(server.url + "/embed/image", files=[("file", (f"{i}.img", b)) for i, b in enumerate(images)])
    return np.array(r.json()["embeddings"])


def vectors(response) -> np.ndarray:
    return np.array([d.embedding for d in response.data])


def test_texts_with_the_clients_default_base64_encoding(server, client, info):
    texts = ["a red circle", "a blue square", "a green star"]
    r = client.embeddings.create(model="clip", input=texts)  # the openai client asks for base64 unless told
    assert r.object == "list" and r.model == info["model"]
    assert [d.index for d in r.data] == [0, 1, 2] and all(d.object == "embedding" for d in r.data)
    got = vectors(r)
    assert got.shape == (3, info["dimensions"])
    assert np.allclose(got, reference_texts(server, texts), atol=1e-6), "same texts, same embeddings, same order"
    assert r.usage.prompt_tokens == r.usage.total_tokens > 0


def test_float_and_base64_on_the_wire(server):
    body = {"model": "clip", "input": ["a red circle", "a pink heart"]}
    floats = httpx.post(server.url + "/v1/embeddings", json={**body, "encoding_format": "float"}).json()
    packed = httpx.post(server.url + "/v1/embeddings", json={**body, "encoding_format": "base64"}).json()
    for f, p in zip(floats["data"], packed["data"]):
        assert isinstance(f["embedding"], list) and isinstance(p["embedding"], str)
        decoded = np.frombuffer(base64.b64decode(p["embedding"]), dtype="<f4")  # little-endian float32
        assert np.array_equal(decoded, np.array(f["embedding"], dtype=np.float32))
    assert floats["usage"] == packed["usage"]


def test_usage_counts_the_model_tokens(client):
    one = client.embeddings.create(model="clip", input="a red circle").usage.prompt_tokens
    assert one == 5, "start token + 'a' + 'red' + 'circle' + end token"
    two = client.embeddings.create(model="clip", input=["a red circle", "a red circle"]).usage.prompt_tokens
    assert two == 2 * one
    image_only = client.embeddings.create(model="clip", input=data_uri(encode(shape_image("red", "circle"))))
    assert image_only.usage.prompt_tokens == 0, "images are not tokens"


def test_images_and_texts_mixed_in_one_batch_keep_their_order(server, client):
    red, blue = encode(shape_image("red", "circle")), encode(shape_image("blue", "square"), "JPEG")
    inputs = ["a red circle", data_uri(red), "a blue square", data_uri(blue, "image/jpeg")]
    got = vectors(client.embeddings.create(model="clip", input=inputs, encoding_format="float"))
    assert np.allclose(got[[0, 2]], reference_texts(server, ["a red circle", "a blue square"]), atol=1e-6)
    assert np.allclose(got[[1, 3]], reference_images(server, [red, blue]), atol=1e-5)
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-4)


def test_concurrent_requests_share_batches_and_stay_correct(server):
    texts = [f"a {c} {s}" for c in ("red", "green", "blue", "yellow") for s in ("circle", "square", "star")]

    async def run() -> list:
        aclient = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        try:
            return await asyncio.gather(*(aclient.embeddings.create(model="clip", input=t) for t in texts))
        finally:
            await aclient.close()

    got = np.array([r.data[0].embedding for r in asyncio.run(run())])
    assert np.allclose(got, reference_texts(server, texts), atol=1e-6)


def test_dimensions_truncates_and_renormalises(client):
    full = vectors(client.embeddings.create(model="clip", input=["a red circle"], encoding_format="float"))[0]
    for fmt in ("float", "base64"):
        got = client.embeddings.create(model="clip", input=["a red circle"], dimensions=32, encoding_format=fmt)
        raw = got.data[0].embedding
        # asked for explicitly, base64 comes back as the string: the client decodes only when it chose base64 itself
        cut = np.frombuffer(base64.b64decode(raw), "<f4") if fmt == "base64" else np.array(raw)
        assert cut.shape == (32,) and abs(np.linalg.norm(cut) - 1) < 1e-5
        assert np.allclose(cut, full[:32] / np.linalg.norm(full[:32]), atol=1e-6)


def test_model_names_and_models_endpoints(client, info):
    for name in (info["model"], info["fingerprint"], "clip"):
        assert client.embeddings.create(model=name, input="a red circle").model == info["model"]
    assert [m.id for m in client.models.list()] == [info["model"]]
    card = client.models.retrieve("clip")
    assert card.id == info["model"] and card.object == "model" and card.owned_by == "clip-serve"
    with pytest.raises(openai.NotFoundError) as err:
        client.embeddings.create(model="text-embedding-3-small", input="a red circle")
    assert err.value.code == "model_not_found" and err.value.param == "model"
    assert info["model"] in err.value.message, "the error names the model this server does serve"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_the_client_raises_its_usual_exceptions(client):
    with pytest.raises(openai.UnprocessableEntityError) as err:
        client.embeddings.create(model="clip", input="a red circle", dimensions=4096)
    assert err.value.param == "dimensions"
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="clip", input=["a red circle", "data:image/png;base64,bm90IGFuIGltYWdl"])
    assert "input[1]" in err.value.message, "the error points at the bad item"
    with pytest.raises(openai.UnprocessableEntityError) as err:
        client.embeddings.create(model="clip", input=[[40, 1000, 2000]])  # token ids (what tiktoken users send)
    assert "token arrays" in err.value.message


BAD = [
    ("POST", "/v1/embeddings", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400,
     "invalid_input"),
    ("POST", "/v1/embeddings", {"json": {"model": "clip", "input": []}}, 422, "invalid_request"),
    ("POST", "/v1/embeddings", {"json": {"input": "a red circle"}}, 422, "invalid_request"),
    ("POST", "/v1/embeddings", {"json": {"model": "clip", "input": "x", "encoding_format": "int8"}}, 422,
     "invalid_request"),
    ("POST", "/v1/embeddings", {"json": {"model": "clip", "input": "x", "dimensions": 0}}, 422, "invalid_request"),
    ("POST", "/v1/embeddings", {"json": {"model": "clip", "input": ["data:text/plain;base64,aGk="]}}, 415,
     "unsupported_media_type"),
    ("POST", "/v1/embeddings", {"json": {"model": "clip", "input": ["a red circle"] * 257}}, 413,
     "payload_too_large"),
    ("POST", "/v1/embeddings", {"json": {"model": "nope", "input": "x"}}, 404, "model_not_found"),
    ("POST", "/v1/embeddings", {"data": {"input": "x"}}, 415, "unsupported_media_type"),
    ("GET", "/v1/nothing-here", {}, 404, "not_found"),
    ("DELETE", "/v1/models", {}, 405, "method_not_allowed"),
]


@pytest.mark.parametrize("method,path,kwargs,status,code", BAD, ids=[f"{b[3]}-{b[4]}" for b in BAD])
def test_errors_take_openais_shape_under_v1(server, method, path, kwargs, status, code):
    r = httpx.request(method, server.url + path, **kwargs)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code and err["message"]
    assert err["type"] == "invalid_request_error"
    outside = httpx.get(server.url + "/nothing-here").json()["error"]
    assert set(outside) == {"type", "message"}, "the rest of the API keeps its own shape"


def test_api_key_is_required_when_set(keyed_server):
    url = keyed_server.url + "/v1"
    with pytest.raises(openai.AuthenticationError) as err:
        openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).embeddings.create(model="clip", input="x")
    assert err.value.code == "invalid_api_key" and err.value.status_code == 401
    bare = httpx.get(url + "/models")
    assert bare.status_code == 401 and bare.headers["www-authenticate"] == "Bearer"
    assert bare.json()["error"]["code"] == "invalid_api_key"
    good = openai.OpenAI(base_url=url, api_key=API_KEY, max_retries=0)
    assert len(good.embeddings.create(model="clip", input="a red circle").data) == 1
    assert good.models.list().data


def test_body_over_the_cap_is_refused_in_openais_shape_too(server):
    """The body cap answers from the middleware before any route runs: it too speaks OpenAI's shape under /v1."""
    import json
    import socket
    from urllib.parse import urlsplit

    address = urlsplit(server.url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 999999999\r\n\r\n")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(body)["error"]["code"] == "payload_too_large"


def test_overloaded_is_a_server_error_with_retry_after_and_is_counted(bundled_dir, tmp_path):
    """A full queue under /v1: 503, `type` server_error, `code` overloaded, Retry-After, and the openai client's
    InternalServerError; counted as queue_full once per refusal. The encoder is held (tests/service/gated.py),
    so the queue is full for as long as the test needs, not for as long as a burst happens to last."""
    server = GatedServer({"CLIP_MODEL": str(bundled_dir), "CLIP_MAX_QUEUE": "2", "CLIP_DRAIN_S": "5"},
                         tmp_path).wait_ready()
    try:
        warm = server.entered()
        server.hold()
        with httpx.Client(base_url=server.url, timeout=120) as http:
            with ThreadPoolExecutor(1) as pool:
                filling = pool.submit(http.post, "/embed/text", json={"texts": ["overload one", "overload two"]})
                server.wait_entered(warm + 1)  # both texts are in the held encoder: the queue (2) is full
                before = metric_value(server.metrics(), "clip_rejected_total", reason="queue_full")
                r = http.post("/v1/embeddings", json={"model": "clip", "input": "a red circle"})
                assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1, r.text
                assert r.json()["error"] == {"message": r.json()["error"]["message"], "type": "server_error",
                                             "param": None, "code": "overloaded"}
                assert "CLIP_MAX_QUEUE" in r.json()["error"]["message"]
                client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
                with pytest.raises(openai.InternalServerError) as err:
                    client.embeddings.create(model="clip", input="a red circle")
                assert err.value.status_code == 503 and err.value.code == "overloaded"
                assert metric_value(server.metrics(), "clip_rejected_total", reason="queue_full") == before + 2
                server.release()
                assert filling.result().status_code == 200, "the work that filled the queue is answered"
        assert client.embeddings.create(model="clip", input="a red circle").data, "and room is made again"
    finally:
        server.stop()
