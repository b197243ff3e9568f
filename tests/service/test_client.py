"""The Python client (service/client.py): sync and async against the real server, retries against a fake one."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from service.client import (AsyncClient, Classification, Client, ClipServeError, Embeddings, LabelScore, LabelSet,
                            LabelSetSummary, ModelInfo)
from tests.service.conftest import API_KEY, encode, shape_image


@pytest.fixture
def client(server):
    with Client(server.url) as c:
        yield c


def reference_images(server, images: list[bytes]) -> np.ndarray:
    r = httpx.post(server.url + "/embed/image", files=[("file", (f"{i}.img", b)) for i, b in enumerate(images)])
    return np.array(r.json()["embeddings"], dtype=np.float32)


def test_info_and_ready(client):
    info = client.info()
    assert isinstance(info, ModelInfo) and info.dimensions == 128 and info.ready and client.ready()
    assert info.raw["batching"]["image_max_batch"] >= 1
    assert not Client("http://127.0.0.1:9", timeout=1).ready(), "an unreachable server is simply not ready"


def test_embed_images_from_paths_bytes_and_pil(server, client, tmp_path):
    red, blue = shape_image("red", "circle"), shape_image("blue", "square")
    path = tmp_path / "red.png"
    red.save(path)
    got = client.embed_images([path, str(path), encode(blue), blue])
    assert isinstance(got, Embeddings) and got.vectors.shape == (4, 128) and got.dimensions == 128
    ref = reference_images(server, [encode(red), encode(blue)])
    assert np.allclose(got.vectors, ref[[0, 0, 1, 1]], atol=1e-5), "every input form gives the same embedding"
    single = client.embed_images(path)  # one image needs no list
    assert len(single) == 1 and np.allclose(single.vectors[0], ref[0], atol=1e-5)
    assert got.fingerprint == client.info().fingerprint


def test_embed_texts(server, client):
    got = client.embed_texts(["a red circle", "a blue square"])
    ref = httpx.post(server.url + "/embed/text", json={"texts": ["a red circle", "a blue square"]}).json()
    assert np.allclose(got.vectors, np.array(ref["embeddings"]), atol=1e-6)
    assert client.embed_texts("a red circle").vectors.shape == (1, 128)


def test_classify_with_labels_templates_and_top_k(client):
    images = [shape_image("red", "circle"), encode(shape_image("blue", "square"))]
    result = client.classify(images, ["red circle", "blue square", "green star"])
    assert isinstance(result, Classification) and result.top == ["red circle", "blue square"]
    assert all(isinstance(x, LabelScore) for x in result.results[0])
    assert abs(sum(x.score for x in result.results[0]) - 1) < 1e-5
    short = client.classify(images[0], ["red circle", "blue square", "green star"], templates="simple", top_k=1)
    assert [len(r) for r in short.results] == [1] and short.top == ["red circle"]
    custom = client.classify(images[0], ["red circle", "blue square"], templates=["a {}.", "a drawing of a {}."])
    assert custom.top == ["red circle"]


def test_label_set_management(client):
    made = client.put_labelset("client-shapes", ["red circle", "blue square"], templates=["a {}."])
    assert made == LabelSet("client-shapes", ["red circle", "blue square"], ["a {}."], client.info().fingerprint)
    assert client.get_labelset("client-shapes") == made
    assert LabelSetSummary("client-shapes", 2, 1) in client.list_labelsets()
    assert client.classify(shape_image("blue", "square"), labelset="client-shapes").top == ["blue square"]
    client.delete_labelset("client-shapes")
    with pytest.raises(ClipServeError) as err:
        client.get_labelset("client-shapes")
    assert err.value.status == 404 and err.value.type == "not_found"


def test_errors_raise_with_status_type_and_message(client):
    with pytest.raises(ClipServeError) as err:
        client.embed_images(b"not an image")
    assert err.value.status == 400 and err.value.type == "invalid_input" and "decod" in err.value.message


def test_async_client(server):
    async def run():
        async with AsyncClient(server.url) as c:
            info = await c.info()
            texts, images, result = await asyncio.gather(
                c.embed_texts(["a red circle"]), c.embed_images([shape_image("red", "circle")]),
                c.classify([shape_image("green", "triangle")], ["green triangle", "red circle"]))
            await c.put_labelset("async-shapes", ["green triangle", "red circle"])
            listed = await c.list_labelsets()
            await c.delete_labelset("async-shapes")
            return info, texts, images, result, listed

    info, texts, images, result, listed = asyncio.run(run())
    assert texts.vectors.shape == images.vectors.shape == (1, info.dimensions)
    assert result.top == ["green triangle"] and "async-shapes" in [x.name for x in listed]


def test_api_key(keyed_server):
    with pytest.raises(ClipServeError) as err:
        Client(keyed_server.url).embed_texts("a red circle")
    assert err.value.status == 401
    with Client(keyed_server.url, api_key=API_KEY) as c:
        assert c.embed_texts("a red circle").vectors.shape == (1, 128)


# --- retries, against a fake transport ----------------------------------------------------------------------
def fake(statuses: list[tuple[int, dict]]) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport answering with `statuses` in turn (the last one repeats); records the requests it saw."""
    seen: list[httpx.Request] = []
    body = {"model": "m", "fingerprint": "f", "dimensions": 2, "embeddings": [[1.0, 0.0]]}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status, headers = statuses[min(len(seen), len(statuses)) - 1]
        if status == 200:
            return httpx.Response(200, json=body, headers=headers)
        return httpx.Response(status, json={"error": {"type": "overloaded", "message": "busy"}}, headers=headers)

    return httpx.MockTransport(handler), seen


def test_retries_503_honouring_retry_after():
    transport, seen = fake([(503, {"Retry-After": "2"}), (503, {"Retry-After": "1"}), (200, {})])
    client = Client("http://clip.test", transport=transport, max_retries=3)
    slept: list[float] = []
    client.sleep = slept.append
    assert client.embed_texts(["x"]).vectors.tolist() == [[1.0, 0.0]]
    assert slept == [2.0, 1.0] and len(seen) == 3
    assert all(r.content == seen[0].content for r in seen), "the same body is sent again"


def test_retry_waits_are_bounded_and_retries_end():
    transport, seen = fake([(503, {"Retry-After": "3600"})])
    client = Client("http://clip.test", transport=transport, max_retries=2, max_retry_wait=5)
    slept: list[float] = []
    client.sleep = slept.append
    with pytest.raises(ClipServeError) as err:
        client.embed_images([b"img"])
    assert err.value.status == 503 and err.value.retry_after == 3600
    assert slept == [5, 5] and len(seen) == 3, "max_retries retries, each wait capped by max_retry_wait"


def test_no_retry_after_means_exponential_backoff_and_4xx_is_final():
    transport, seen = fake([(503, {}), (503, {}), (200, {})])
    client = Client("http://clip.test", transport=transport, backoff=0.25)
    slept: list[float] = []
    client.sleep = slept.append
    client.embed_texts("x")
    assert slept == [0.25, 0.5]
    transport, seen = fake([(422, {})])
    client = Client("http://clip.test", transport=transport)
    client.sleep = slept.append
    with pytest.raises(ClipServeError):
        client.embed_texts("x")
    assert len(seen) == 1


def test_async_client_retries_too():
    async def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            return httpx.Response(503, headers={"Retry-After": "1"}, json={"error": {"type": "x", "message": "y"}})
        return httpx.Response(200, json={"model": "m", "fingerprint": "f", "dimensions": 1, "embeddings": [[1.0]]})

    calls: list[httpx.Request] = []
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    async def run():
        async with AsyncClient("http://clip.test", transport=httpx.MockTransport(handler)) as c:
            c.sleep = fake_sleep
            return await c.embed_texts("x")

    assert asyncio.run(run()).vectors.tolist() == [[1.0]] and slept == [1.0] and len(calls) == 2
