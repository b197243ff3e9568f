"""A corpus of malformed and hostile inputs, each with the status it must get; afterwards the server still
answers correctly and has never answered 500. Also the body-size cap, for declared and chunked bodies."""

from __future__ import annotations

import base64
import io
import random
import struct
import time
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.service.conftest import encode, shape_image
from tests.service.server import metric_value

LABELS = ["red circle", "blue square"]


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG declaring width x height pixels, all zero: a few KB that would decode to gigabytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    idat = b"".join(z.compress(row * 500) for _ in range(height // 500)) + z.compress(row * (height % 500)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _jpeg() -> bytes:
    return encode(shape_image("green", "star").resize((256, 256)), "JPEG", quality=90)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


FILES = {  # name -> (bytes, expected status) sent as a multipart `file` part
    "empty file": (b"", 400),
    "random bytes": (random.Random(0).randbytes(4096), 400),
    "truncated JPEG": (_jpeg()[: len(_jpeg()) // 2], 400),
    "plain text": (b"hello, I am not an image\n" * 20, 400),
    "SVG": (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', 415),
    "SVG without prolog": (b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="5" height="5"/></svg>', 415),
    "PDF": (b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n", 415),
    "PNG signature only": (b"\x89PNG\r\n\x1a\n", 400),
    "PNG bomb 12000x12000": (png_bomb(12000, 12000), 413),
    "PNG bomb 20000x20000": (png_bomb(20000, 20000), 413),
}

JSON = {  # name -> (path, body, expected status)
    "invalid base64": ("/embed/image", {"images": ["not base64 at all!!"]}, 400),
    "base64 of a bomb": ("/embed/image", {"images": [_b64(png_bomb(12000, 12000))]}, 413),
    "data URI of the wrong type": ("/embed/image", {"images": ["data:application/pdf;base64,JVBERi0xLjQ="]}, 415),
    "data URI without base64": ("/embed/image", {"images": ["data:image/png,rawbytes"]}, 400),
    "images not a list": ("/embed/image", {"images": "abc"}, 422),
    "image items not strings": ("/embed/image", {"images": [1, 2]}, 422),
    "texts not strings": ("/embed/text", {"texts": [1, None]}, 422),
    "texts null": ("/embed/text", {"texts": None}, 422),
    "top-level array": ("/embed/text", ["a", "b"], 422),
    "unknown field": ("/embed/text", {"texts": ["a"], "extra": 1}, 422),
    "labels a string": ("/classify", {"image": _b64(encode(shape_image("red", "circle"))), "labels": "red"}, 422),
    "top_k not an int": ("/classify", {"image": "aGk=", "labels": ["a"], "top_k": "three"}, 422),
    "top_k zero": ("/classify", {"image": "aGk=", "labels": ["a"], "top_k": 0}, 422),
    "empty label list": ("/classify", {"image": _b64(encode(shape_image("red", "circle"))), "labels": []}, 422),
    "blank label": ("/classify", {"image": _b64(encode(shape_image("red", "circle"))), "labels": ["  "]}, 422),
    "10,000 labels": ("/classify", {"image": _b64(encode(shape_image("red", "circle"))),
                                    "labels": [f"label {i}" for i in range(10_000)]}, 413),
    "100,000-character label": ("/classify", {"image": _b64(encode(shape_image("red", "circle"))),
                                              "labels": ["red circle " + "x" * 100_000, "blue square"]}, 200),
    "100,000-letter word as text": ("/embed/text", {"texts": ["".join(random.Random(1).choices(
        "abcdefghijklmnopqrstuvwxyz", k=100_000))]}, 200),
    "unicode and emoji labels": ("/classify", {"image": _b64(encode(shape_image("red", "circle"))),
                                               "labels": ["🔴 círculo rojo", "青い四角", "💙🟦", "ünïcödé ✓"]}, 200),
}


@pytest.fixture(scope="module")
def before(server) -> dict:
    """Correct answers recorded before the corpus, and the count of 500s so far."""
    img = encode(shape_image("red", "circle"))
    emb = httpx.post(server.url + "/embed/image", files=[("file", ("a.png", img))]).json()["embeddings"]
    return {"img": img, "emb": np.array(emb), "500s": metric_value(httpx.get(server.url + "/metrics").text,
                                                                   "clip_requests_total", status="500")}


@pytest.mark.parametrize("name", list(FILES))
def test_malformed_file(server, before, name):
    data, status = FILES[name]
    start = time.perf_counter()
    r = httpx.post(server.url + "/embed/image", files=[("file", ("upload", data))], timeout=60)
    assert r.status_code == status, (name, r.text)
    assert r.json()["error"]["message"]
    if "bomb" in name:  # refused from the header: no 144-400 MP decode happened
        assert "CLIP_MAX_IMAGE_PIXELS" in r.json()["error"]["message"] and time.perf_counter() - start < 5


@pytest.mark.parametrize("name", list(JSON))
def test_malformed_json(server, before, name):
    path, body, status = JSON[name]
    r = httpx.post(server.url + path, json=body, timeout=120)
    assert r.status_code == status, (name, r.text[:500])
    if status != 200:
        assert r.json()["error"]["type"] and r.json()["error"]["message"]


def test_bad_item_in_a_batch_names_its_index(server, before):
    good = ("a.png", before["img"])
    r = httpx.post(server.url + "/embed/image", files=[("file", good), ("file", ("b", b"garbage")), ("file", good)])
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("images[1]")


def test_malformed_multipart_is_400(server):
    r = httpx.post(server.url + "/embed/image", content=b"--xyz\r\nnonsense", headers={
        "content-type": "multipart/form-data; boundary=xyz"})
    assert r.status_code in (400, 422), r.text


def test_body_over_the_cap_is_413_from_content_length(server):
    r = httpx.post(server.url + "/embed/text", content=b"x" * (20 * 1024 * 1024 + 1),
                   headers={"content-type": "application/json"})
    assert r.status_code == 413 and "CLIP_MAX_BODY_BYTES" in r.json()["error"]["message"]


@pytest.mark.parametrize("kind", ["json", "multipart"])
def test_chunked_body_over_the_cap_is_413_while_streaming(server, kind):
    boundary = b"b0undary"
    head = b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'

    def body():
        if kind == "multipart":
            yield head
        for _ in range(22):  # 22 MiB in 1 MiB chunks, no Content-Length
            yield b"A" * (1024 * 1024)

    ctype = "application/json" if kind == "json" else f"multipart/form-data; boundary={boundary.decode()}"
    r = httpx.post(server.url + "/embed/image", content=body(), headers={"content-type": ctype}, timeout=60)
    assert r.status_code == 413, r.text[:300]
    assert r.json()["error"]["type"] == "payload_too_large"


def test_too_many_images_is_413(server, before):
    r = httpx.post(server.url + "/embed/image", files=[("file", ("a.png", before["img"]))] * 65)
    assert r.status_code == 413, r.text


def test_still_correct_after_the_corpus_and_never_a_500(server, before):
    emb = httpx.post(server.url + "/embed/image", files=[("file", ("a.png", before["img"]))]).json()["embeddings"]
    assert np.allclose(np.array(emb), before["emb"], atol=1e-5)
    r = httpx.post(server.url + "/classify", files=[("file", ("a.png", before["img"]))], data={"labels": LABELS})
    assert r.status_code == 200 and r.json()["results"][0][0]["label"] == "red circle"
    tiny = Image.new("RGB", (8, 8), "red")
    buf = io.BytesIO()
    tiny.save(buf, "PNG")
    assert httpx.post(server.url + "/embed/image", files=[("file", ("t.png", buf.getvalue()))]).status_code == 200
    assert httpx.get(server.url + "/readyz").status_code == 200
    fives = metric_value(httpx.get(server.url + "/metrics").text, "clip_requests_total", status="500")
    assert fives == before["500s"] == 0
