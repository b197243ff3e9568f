"""POST /embed/image's fast path (service/routes/embed.py FastImagePath, service/plain_multipart.py): the plain
multipart bodies it parses come out as Starlette's parser reads them, every other body goes to the route, and a
request it answers gets the route's answer: the same embeddings, the same errors, the same metrics."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request

import service.routes.embed as embed_route
from service.plain_multipart import boundary_of, file_parts
from service.settings import Settings
from tests.service.conftest import encode, shape_image
from tests.service.fake_backend import COLOURS, png, ready_client
from tests.service.server import metric_value

RED, BLUE = encode(shape_image("red", "circle")), encode(shape_image("blue", "square"))  # parsing only
LATE, FRESH = png(COLOURS["late"]), png(COLOURS["fresh"])  # named by the fake backend; never "hold"
TRICKY = b"\r\n--\r\n\r\n--boundary-but-not-ours\r\n" + bytes(range(256))  # delimiter-like bytes inside a file


def encoded(files: list[tuple[str, bytes]], boundary: bytes | None = None) -> tuple[bytes, bytes]:
    """A multipart body as httpx (and so the client library, and curl alike) sends it -> (body, content type)."""
    request = httpx.Request("POST", "http://x/embed/image", files=[(k, (f"f{i}.jpg", v, "image/jpeg"))
                                                                    for i, (k, v) in enumerate(files)])
    body, ctype = request.read(), request.headers["content-type"].encode()
    if boundary is not None:
        old = ctype.split(b"boundary=")[1]
        body, ctype = body.replace(old, boundary), ctype.replace(old, b'"' + boundary + b'"')
    return body, ctype


def starlette_files(body: bytes, ctype: bytes) -> list[bytes]:
    """What the route's parser (Starlette's Request.form) reads from the body: its file parts' bytes, in order."""

    async def parse() -> list[bytes]:
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        form = await Request({"type": "http", "method": "POST", "headers": [(b"content-type", ctype)]},
                             receive).form()
        return [await v.read() for _, v in form.multi_items() if not isinstance(v, str)]

    return asyncio.run(parse())


def fast_files(body: bytes, ctype: bytes, max_files: int = 32) -> list[bytes] | None:
    boundary = boundary_of({"headers": [(b"content-type", ctype)]})
    return None if boundary is None else file_parts(body, boundary, max_files)


PLAIN = {  # name -> (files, boundary to use instead of httpx's, quoted)
    "one image": ([("file", RED)], None),
    "three images, as the client library names them": ([("file", RED), ("file", BLUE), ("file", RED)], None),
    "every part name the route takes": ([("file", RED), ("files", BLUE), ("image", RED), ("images", BLUE)], None),
    "an empty file": ([("file", b"")], None),
    "delimiter-like bytes in the data": ([("file", TRICKY), ("file", RED)], None),
    "a quoted boundary with a space": ([("file", RED), ("file", TRICKY)], b"a b'()+_,-./:=?"),
}


@pytest.mark.parametrize("name", list(PLAIN))
def test_plain_bodies_parse_as_starlettes_parser_reads_them(name):
    files, boundary = PLAIN[name]
    body, ctype = encoded(files, boundary)
    assert fast_files(body, ctype) == starlette_files(body, ctype) == [v for _, v in files]


def _edited(old: bytes, new: bytes, count: int = 1) -> tuple[bytes, bytes]:
    body, ctype = encoded([("file", RED), ("file", BLUE)])
    assert old in body
    return body.replace(old, new, count), ctype


def _with(ctype_edit: bytes) -> tuple[bytes, bytes]:
    body, ctype = encoded([("file", RED)])
    return body, ctype + ctype_edit


OTHER = {  # name -> (body, content type): each left to the route's parser
    "a form field": _edited(b'; filename="f1.jpg"', b""),
    "an unknown part name": _edited(b'name="file"', b'name="photo"'),
    "a part name in capitals": _edited(b'name="file"', b'name="FILE"'),
    "a third header": _edited(b"Content-Type: image/jpeg", b"Content-Type: image/jpeg\r\nContent-Transfer-Encoding: "
                                                           b"base64"),
    "two content types": _edited(b"Content-Type: image/jpeg", b"Content-Type: image/jpeg\r\nContent-Type: x/y"),
    "filename before name": _edited(b'name="file"; filename="f0.jpg"', b'filename="f0.jpg"; name="file"'),
    "filename* (RFC 5987)": _edited(b'filename="f0.jpg"', b"filename*=UTF-8''f0.jpg"),
    "an escaped quote in the filename": _edited(b'filename="f0.jpg"', b'filename="f\\"0.jpg"'),
    "a preamble": (b"preamble\r\n" + encoded([("file", RED)])[0], encoded([("file", RED)])[1]),
    "no closing delimiter": (encoded([("file", RED)])[0].rsplit(b"--", 1)[0], encoded([("file", RED)])[1]),
    "an epilogue": (encoded([("file", RED)])[0] + b"epilogue", encoded([("file", RED)])[1]),
    "padding after a delimiter": _edited(b"\r\nContent-Disposition", b" \r\nContent-Disposition", 2),
    "a charset parameter": _with(b"; charset=utf-8"),
    "more files than allowed": encoded([("file", RED)] * 33),
    "no parts": (b"--x--\r\n", b"multipart/form-data; boundary=x"),
    "JSON": (b'{"images": []}', b"application/json"),
}


@pytest.mark.parametrize("name", list(OTHER))
def test_any_other_body_is_left_to_the_routes_parser(name):
    assert fast_files(*OTHER[name]) is None


@pytest.fixture(scope="module")
def app_client():
    with ready_client(Settings(api_key="k3y", max_images_per_request=32)) as client_and_backend:
        yield client_and_backend


AUTH = {"authorization": "Bearer k3y"}


def post(client: TestClient, files: list[tuple[str, bytes]], field: bool = False, headers: dict = AUTH):
    """POST files as a plain body (the fast path's) or, with `field`, with a form field too (the route's)."""
    return client.post("/embed/image", headers=headers, data={"note": "x"} if field else None,
                       files=[(k, (f"f{i}.png", v, "image/png")) for i, (k, v) in enumerate(files)])


def test_the_fast_path_answers_plain_bodies_and_the_route_the_others(app_client, monkeypatch):
    client, backend = app_client
    fast = post(client, [("file", LATE), ("file", FRESH)])
    fast_encoded = backend.encoded[-2:]
    routed = post(client, [("file", LATE), ("file", FRESH)], field=True)
    assert fast.status_code == routed.status_code == 200
    assert fast.json() == routed.json()
    assert fast_encoded == backend.encoded[-2:] == ["late", "fresh"]  # the same images, in request order

    async def broken(*args, **kwargs):
        raise RuntimeError("the route's parser was called")

    monkeypatch.setattr(embed_route, "parse_embed_images", broken)
    assert post(client, [("file", LATE)]).status_code == 200  # never reached the route
    with pytest.raises(RuntimeError, match="the route's parser"):
        post(client, [("file", LATE)], field=True)


REFUSED = {  # name -> (files, headers): refused alike by the fast path and the route
    "no API key": ([("file", LATE)], {}),
    "a wrong API key": ([("file", LATE)], {"authorization": "Bearer nope"}),
    "a corrupt second image": ([("file", LATE), ("file", b"not an image")], AUTH),
    "an empty file": ([("file", b"")], AUTH),
    "an SVG": ([("file", b'<svg xmlns="http://www.w3.org/2000/svg"/>')], AUTH),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_the_fast_path_refuses_as_the_route_refuses(app_client, name):
    files, headers = REFUSED[name]
    client = app_client[0]
    fast, routed = post(client, files, headers=headers), post(client, files, field=True, headers=headers)
    assert fast.status_code == routed.status_code >= 400
    assert fast.json() == routed.json()
    assert fast.headers.get("www-authenticate") == routed.headers.get("www-authenticate")


def test_a_request_the_fast_path_answers_is_counted_under_its_route(app_client):
    client = app_client[0]

    def counted() -> float:
        return metric_value(client.get("/metrics").text, "clip_requests_total", endpoint="/embed/image",
                            status="200")

    before = counted()
    assert post(client, [("file", LATE)]).status_code == 200
    assert counted() == before + 1
