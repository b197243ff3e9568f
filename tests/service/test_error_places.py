"""An error about one item of a request carries its place (field, index) as data, and each API surface writes it
once: ours as "images[3]: ...", OpenAI's as "input[7]: ..." (the item's position in `input`) with `param` "input".
What clients read is pinned here, the same on every route that takes images."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from service.errors import BadInput, InvalidField, Overloaded, error_response
from tests.service.conftest import encode, shape_image

NOT_AN_IMAGE = base64.b64encode(b"not an image").decode()


@pytest.fixture(scope="module")
def good() -> str:
    return base64.b64encode(encode(shape_image("red", "circle"))).decode()


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text[:300]
    return r.json()["error"]


@pytest.fixture(scope="module")
def undecodable(server) -> str:
    """What the server says of bytes that are no image, when that image is the request's only one."""
    message = _error(httpx.post(server.url + "/embed/image", json={"images": [NOT_AN_IMAGE]}), 400)["message"]
    assert not message.startswith("images["), "one image needs no index"
    return message


@pytest.mark.parametrize("route", ["/embed/image", "/classify"])
def test_our_surface_names_the_bad_image_of_several(server, good, undecodable, route):
    extra = {"labels": ["red circle", "blue square"]} if route == "/classify" else {}
    r = httpx.post(server.url + route, json={"images": [good, NOT_AN_IMAGE, good], **extra})
    assert _error(r, 400)["message"] == f"images[1]: {undecodable}"
    r = httpx.post(server.url + route, json={"images": [good, "not base64!"], **extra})
    assert _error(r, 400)["message"] == "images[1]: not valid base64"
    r = httpx.post(server.url + route, json={"images": ["not base64!"], **extra})
    assert _error(r, 400)["message"] == "images[0]: not valid base64", "a string that is no base64 is always named"
    r = httpx.post(server.url + route, json={"images": [good, "data:text/plain;base64,aGk="], **extra})
    assert _error(r, 415)["message"] == "images[1]: data URI of type 'text/plain' is not an image"


def test_openai_surface_names_the_position_in_input(server, good, undecodable):
    def post(items: list[str]) -> httpx.Response:
        return httpx.post(server.url + "/v1/embeddings", json={"model": "clip", "input": items})

    uri = "data:image/png;base64,"
    cases = [  # input, status, message
        (["a text", uri + NOT_AN_IMAGE], 400, f"input[1]: {undecodable}"),  # the only image: named all the same
        (["a", uri + good, "b", uri + NOT_AN_IMAGE], 400, f"input[3]: {undecodable}"),
        (["a", uri + good, uri + "!!!"], 400, "input[2]: not valid base64"),
        (["a", "data:text/plain;base64,aGk="], 415, "input[1]: data URI of type 'text/plain' is not an image"),
    ]
    for items, status, message in cases:
        error = _error(post(items), status)
        assert (error["message"], error["param"]) == (message, "input"), items


def test_an_error_without_a_place_reads_as_its_message():
    """Not every error is about one item: those keep their message, and OpenAI's `param` is their field or null."""
    ours = json.loads(error_response(InvalidField("dimensions: too many", field="dimensions"), "/embed/image").body)
    assert ours == {"error": {"type": "invalid_request", "message": "dimensions: too many"}}
    openai = json.loads(error_response(InvalidField("dimensions: too many", field="dimensions"), "/v1/embeddings").body)
    assert (openai["error"]["message"], openai["error"]["param"]) == ("dimensions: too many", "dimensions")
    openai = json.loads(error_response(Overloaded("queue is full"), "/v1/embeddings").body)["error"]
    assert (openai["message"], openai["param"]) == ("queue is full", None)


def test_the_place_is_written_once_from_data():
    exc = BadInput("not valid base64").at("images", 3)
    assert (exc.message, exc.field, exc.index) == ("not valid base64", "images", 3)
    assert str(exc) == exc.located_message == "images[3]: not valid base64"
    body = json.loads(error_response(exc, "/embed/image").body)["error"]
    assert body["message"] == "images[3]: not valid base64"
    body = json.loads(error_response(BadInput("not valid base64").at("input", 7), "/v1/embeddings").body)["error"]
    assert (body["message"], body["param"]) == ("input[7]: not valid base64", "input")
