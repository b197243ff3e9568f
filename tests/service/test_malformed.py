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

_RED = _b64(encode(shape_image("red", "circle")))
_DEEP = b"[" * 50_000 + b"]" * 50_000
_DIGITS = b"1" * 5_000  # over Python's 4,300-digit limit for int(str)
_SURROGATE = b'"\\ud800"'  # JSON's escape for a lone UTF-16 surrogate: not text, cannot be UTF-8 encoded
RAW = {  # name -> (method, path, JSON body bytes, expected status); each decided before any model work
    "texts nested 50,000 deep": ("POST", "/embed/text", b'{"texts": ' + _DEEP + b"}", 400),
    "images nested 50,000 deep": ("POST", "/embed/image", b'{"images": ' + _DEEP + b"}", 400),
    "labels nested 50,000 deep": ("POST", "/classify", b'{"image": "%s", "labels": %s}' % (_RED.encode(), _DEEP), 400),
    "label set nested 50,000 deep": ("PUT", "/labelsets/deep", b'{"labels": ' + _DEEP + b"}", 400),
    "/v1 input nested 50,000 deep": ("POST", "/v1/embeddings", b'{"model": "clip", "input": ' + _DEEP + b"}", 400),
    "top_k of 5,000 digits": ("POST", "/classify", b'{"image": "%s", "labels": ["a", "b"], "top_k": %s}'
                              % (_RED.encode(), _DIGITS), 400),
    "/v1 dimensions of 5,000 digits": ("POST", "/v1/embeddings", b'{"model": "clip", "input": "a", "dimensions": '
                                       + _DIGITS + b"}", 400),
    "5,000 digits in texts": ("POST", "/embed/text", b'{"texts": [' + _DIGITS + b"]}", 400),
    "lone surrogate label": ("POST", "/classify", b'{"image": "%s", "labels": [%s, "b"]}' % (_RED.encode(), _SURROGATE),
                             400),
    "lone surrogate template": ("POST", "/classify", b'{"image": "%s", "labels": ["a"], "templates": ["\\udfff {}"]}'
                                % _RED.encode(), 400),
    "lone surrogate in a label set": ("PUT", "/labelsets/surrogate", b'{"labels": [%s]}' % _SURROGATE, 400),
    "lone surrogate text": ("POST", "/embed/text", b'{"texts": [%s]}' % _SURROGATE, 400),
    "lone surrogate as raw bytes": ("POST", "/embed/text", b'{"texts": ["\xed\xa0\x80"]}', 400),
    "lone surrogate image string": ("POST", "/embed/image", b'{"images": [%s]}' % _SURROGATE, 400),
    "lone surrogate in a key": ("POST", "/embed/text", b'{"texts": ["a"], "\\udc00": 1}', 400),
    "lone surrogate /v1 input": ("POST", "/v1/embeddings", b'{"model": "clip", "input": [%s]}' % _SURROGATE, 400),
    "lone surrogate /v1 model": ("POST", "/v1/embeddings", b'{"model": %s, "input": ["a"]}' % _SURROGATE, 400),
    "lone surrogate in UTF-16 JSON": ("POST", "/embed/text", '{"texts": ["\\ud800"]}'.encode("utf-16"), 400),
}


def _multipart(fields: list[tuple[str, bytes]], charset: str = "utf-8") -> tuple[bytes, dict[str, str]]:
    parts = [b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
             + encode(shape_image("red", "circle")) + b"\r\n"]
    parts += [b'--b0undary\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (k.encode(), v)
              for k, v in fields]
    return b"".join(parts) + b"--b0undary--\r\n", {
        "content-type": f"multipart/form-data; boundary=b0undary; charset={charset}"}


MULTIPART = {  # name -> (form fields, the body's declared charset, expected status), all to /classify
    "top_k of 5,000 digits": ([("labels", b"a"), ("labels", b"b"), ("top_k", _DIGITS)], "utf-8", 422),
    "surrogate label via unicode_escape": ([("labels", b"\\ud800"), ("labels", b"b")], "unicode_escape", 400),
    "surrogate label via UTF-7": ([("labels", b"+2AA-"), ("labels", b"b")], "utf-7", 400),
    "surrogate template via unicode_escape": ([("labels", b"a"), ("templates", b"\\udfff {}")], "unicode_escape",
                                              400),
    "surrogate label set name": ([("labelset", b"\\ud800")], "unicode_escape", 400),
}


def _model_work(server) -> tuple[float, float]:
    """Texts tokenised and images decoded so far, once no earlier test's work is queued."""
    assert server.wait_idle(), "the shared server's queue never emptied"
    text = server.metrics()
    return tuple(metric_value(text, "clip_preprocess_seconds_count", modality=m) for m in ("text", "image"))


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


@pytest.mark.parametrize("name", list(RAW))
def test_malformed_raw_json_is_4xx_before_model_work(server, before, name):
    method, path, body, status = RAW[name]
    work = _model_work(server)
    r = httpx.request(method, server.url + path, content=body, headers={"content-type": "application/json"},
                      timeout=60)
    assert r.status_code == status, (name, r.text[:300])
    error = r.json()["error"]
    if path.startswith("/v1/"):  # OpenAI's shape there
        assert error["type"] == "invalid_request_error" and error["code"] == "invalid_input" and error["message"]
    else:
        assert error["type"] == "invalid_input" and error["message"]
    assert _model_work(server) == work, "nothing was tokenised or decoded"


@pytest.mark.parametrize("name", list(MULTIPART))
def test_malformed_multipart_fields_are_4xx_before_model_work(server, before, name):
    fields, charset, status = MULTIPART[name]
    body, headers = _multipart(fields, charset)
    work = _model_work(server)
    r = httpx.post(server.url + "/classify", content=body, headers=headers)
    assert r.status_code == status, (name, r.text[:300])
    assert r.json()["error"]["type"] and len(r.json()["error"]["message"]) < 500
    assert _model_work(server) == work, "nothing was tokenised or decoded"


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
