"""service/bodies.py on its own: image strings (base64 in its variants, data URIs, paths and URLs refused), the
422 message of a validation error, and form fields. Each case says what a client sees: the bytes, or the 4xx
and the words that tell it what to fix."""

from __future__ import annotations

import asyncio
import base64
from types import SimpleNamespace

import pytest
from starlette.requests import Request

from service import bodies
from service.errors import BadInput, InvalidField, UnsupportedMedia
from service.schemas import EmbedTextsRequest

HELLO = base64.b64encode(b"hello").decode()  # "aGVsbG8="


@pytest.mark.parametrize("sent", [
    HELLO,
    "aGVsbG8",  # padding left off: one "=" missing
    "aGVs\r\nbG8=",  # a MIME line break
    " aGVs bG8=\t",  # ASCII spaces and tabs anywhere
    "aGVs\u00a0bG8=\u2003",  # other Unicode whitespace, which takes the slow path
    f"data:image/png;base64,{HELLO}",
    f"data:image/png;name=x.png;base64,{HELLO}",  # parameters before ;base64
    f"  data:IMAGE/PNG;base64,{HELLO}  ",  # the type is case-insensitive; the string is stripped
    f"DATA:image/png;BASE64,{HELLO}",  # so are the scheme (RFC 3986) and ;base64
])
def test_base64_and_data_uris_decode(sent):
    assert bodies.decode_image_string(sent) == b"hello"


@pytest.mark.parametrize("raw", [bytes([0xF8]), bytes([0xFF, 0xF0]), bytes([0xFB, 0xF0]), bytes([0xFB, 0xEF, 0xFF])])
def test_url_safe_base64_decodes_like_the_standard_alphabet(raw):
    """"-" alone, "_" alone, both, and the standard "+/" all decode (unpadded too)."""
    for encoded in (base64.urlsafe_b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("="),
                    base64.b64encode(raw).decode()):
        assert bodies.decode_image_string(encoded) == raw, encoded


@pytest.mark.parametrize("sent", [
    "not base64 at all!!", "aGVsbG8*", "aGVsbG8=\u00a0\ud800",  # a lone surrogate among Unicode whitespace
    "", "   ", "aGVsbG8=,aGk=",
])
def test_what_is_not_base64_is_400(sent):
    with pytest.raises(BadInput) as err:
        bodies.decode_image_string(sent)
    assert err.value.message == "not valid base64" and err.value.index is None  # placed by images_from_strings


@pytest.mark.parametrize("sent,error,words", [
    (f"data:text/plain;base64,{HELLO}", UnsupportedMedia, "data URI of type 'text/plain' is not an image"),
    # no type: RFC 2397's default
    (f"data:;base64,{HELLO}", UnsupportedMedia, "data URI of type 'text/plain' is not an image"),
    (f"data:image/png,{HELLO}", BadInput, "data URI must be base64-encoded"),
    ("data:image/png;base64", BadInput, "malformed data URI"),  # no comma: no payload
    (f"data:image png;base64,{HELLO}", BadInput, "malformed data URI"),
    (f"data:image/png;base64,{HELLO},{HELLO}", BadInput, "not valid base64"),  # the head ends at the first ,
])
def test_data_uris_that_are_not_base64_images(sent, error, words):
    with pytest.raises(error) as err:
        bodies.decode_image_string(sent)
    assert err.value.message == words, err.value.message


@pytest.mark.parametrize("sent", ["\\\\server\\share\\cat.jpg", "~/cat.jpg", "./cat.jpg", "../cat.jpg",
                                  "  ./cat.jpg", "\t~root/.ssh/id_rsa"])
def test_local_paths_are_never_read(sent):
    assert bodies.is_path(sent) and not bodies.is_url(sent)
    with pytest.raises(BadInput) as err:
        bodies.decode_image_string(sent)
    assert err.value.message.startswith("local paths are never read"), err.value.message


@pytest.mark.parametrize("sent", ["https://img.example.com/cat.jpg", "  file:///etc/passwd", "HTTP://x/y", "s3://b/k",
                                  "gopher://x"])
def test_urls_are_refused_when_urls_are_off(sent):
    assert bodies.is_url(sent) and not bodies.is_path(sent)
    with pytest.raises(BadInput) as err:
        bodies.decode_image_string(sent)
    assert err.value.message == bodies.URLS_OFF


@pytest.mark.parametrize("sent", ["/9j/4AAQSkZJRg==", HELLO, "data:image/png;base64,aGk=",
                                  "DATA:image/png;base64,aGk="])
def test_base64_and_data_uris_are_neither_paths_nor_urls(sent):
    """base64 of a JPEG starts with "/9j/": a leading "/" alone is not a path."""
    assert not bodies.is_path(sent) and not bodies.is_url(sent)


def _request(url_fetcher=None) -> Request:
    app = SimpleNamespace(state=SimpleNamespace(url_fetcher=url_fetcher, settings=None))
    return Request({"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b"", "app": app})


def test_the_first_url_is_named_when_urls_are_off():
    strings = [HELLO, "./x", "https://a.example/1.png"]
    with pytest.raises(BadInput) as err:  # the URL check comes first: it names the first URL, not the path
        asyncio.run(bodies.images_from_strings(_request(), [HELLO, "https://a.example/1.png", "https://b.example/"]))
    assert err.value.located_message == f"images[1]: {bodies.URLS_OFF}"
    with pytest.raises(BadInput) as err:
        asyncio.run(bodies.images_from_strings(_request(), strings))
    assert err.value.located_message == f"images[2]: {bodies.URLS_OFF}"


def test_strings_decode_in_order_naming_the_bad_ones_index():
    assert asyncio.run(bodies.images_from_strings(_request(), [HELLO, base64.b64encode(b"x").decode()])) == \
        [b"hello", b"x"]
    with pytest.raises(BadInput) as err:
        asyncio.run(bodies.images_from_strings(_request(), [HELLO, HELLO, "!!"]))
    assert err.value.located_message == "images[2]: not valid base64"
    with pytest.raises(BadInput) as err:  # some items of a field (OpenAI's `input`): named by their place in it
        asyncio.run(bodies.images_from_strings(_request(), [HELLO, "!!"], field="input", positions=[3, 7]))
    assert err.value.located_message == "input[7]: not valid base64" and err.value.field == "input"


# --- the 422 message and form fields -------------------------------------------------------------------------
def test_a_validation_error_names_each_field_and_stops_at_five():
    with pytest.raises(InvalidField) as err:
        bodies.validate(EmbedTextsRequest, {"texts": [1, None, 2, 3, 4, 5, 6]})
    parts = err.value.message.split("; ")
    assert [p.split(": ", 1)[0] for p in parts] == [f"texts.{i}" for i in range(5)], err.value.message
    assert all(p.split(": ", 1)[1] == "Input should be a valid string" for p in parts), err.value.message


def test_a_body_of_the_wrong_type_is_named_body():
    with pytest.raises(InvalidField) as err:
        bodies.validate(EmbedTextsRequest, ["a"])
    assert err.value.message.startswith("body: Input should be a valid dictionary"), err.value.message


def test_a_lone_surrogate_is_named_by_its_path():
    with pytest.raises(BadInput) as err:
        bodies.reject_surrogates({"labels": ["a", "b\ud800"], "top_k": 1})
    assert err.value.message.startswith("labels[1]: not valid Unicode text") and err.value.field == "labels"
    with pytest.raises(BadInput) as err:
        bodies.reject_surrogates({"input": [{"\udc00": 1}]})
    assert err.value.message.startswith("input[0]: a key is not valid Unicode") and err.value.field == "input"
    with pytest.raises(BadInput) as err:
        bodies.reject_surrogates("\ud800")
    assert err.value.message.startswith("body: ") and err.value.field is None
    with pytest.raises(BadInput) as err:  # a key of the body itself
        bodies.reject_surrogates({"\udc00": 1})
    assert err.value.message.startswith("body: a key is not valid Unicode") and err.value.field is None
    with pytest.raises(BadInput) as err:  # nested objects: the path names every key on the way
        bodies.reject_surrogates({"a": {"b": ["x", "\ud800"]}})
    assert err.value.message.startswith("a.b[1]: not valid Unicode text") and err.value.field == "a"
    bodies.reject_surrogates({"labels": ["ünïcödé 🙂", {"k": ["v"]}], "n": [1, 2.5, None, True]})  # all text: passes


def test_form_fields_given_once():
    assert bodies.single_field({}, "top_k") is None and bodies.single_field({"top_k": []}, "top_k") is None
    assert bodies.single_field({"top_k": ["3"], "labels": ["a", "b"]}, "top_k") == "3"
    with pytest.raises(InvalidField) as err:
        bodies.single_field({"top_k": ["3", "4"]}, "top_k")
    assert err.value.message == "field 'top_k' given 2 times; give it once"


def test_integer_form_fields():
    assert bodies.int_field({}, "top_k") is None
    assert bodies.int_field({"top_k": ["3"], "x": ["y"]}, "top_k") == 3
    with pytest.raises(InvalidField) as err:
        bodies.int_field({"top_k": ["3", "4"]}, "top_k")
    assert "given 2 times" in err.value.message
    for value, shown in (("three", "'three'"), ("x" * 40, repr("x" * 40)), ("y" * 41, repr("y" * 40) + "...")):
        with pytest.raises(InvalidField) as err:
            bodies.int_field({"top_k": [value]}, "top_k")
        assert err.value.message == f"top_k: must be an integer, got {shown}", err.value.message


@pytest.mark.parametrize("body,message", [
    (b"[" * 100_000, "body nests too deeply: this server parses JSON up to about 900 levels"),
    (b'{"a": }', "body is not valid JSON: Expecting value: line 1 column 7 (char 6)"),
    (b"9" * 5000, "body is not valid JSON: a number has too many digits"),
    (b"\xff", "body is not valid JSON: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
])
def test_json_that_python_cannot_read_is_400_saying_why(body, message):
    with pytest.raises(BadInput) as err:
        bodies.parse_json(body, EmbedTextsRequest)
    assert err.value.message == message
