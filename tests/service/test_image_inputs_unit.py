"""POST /embed/image's inputs in-process (service/inputs.py, service/bodies.py), on the app with a fake backend:
the names an image part may have, how many parts and stray fields a form may carry, malformed forms, JSON image
counts, the content type, and the access log's image count; each refusal with the words a client reads. The real
server's tests (test_api.py, test_malformed.py, test_limits.py) check the same end to end; these run in seconds, in
the process the mutation check (make mutation) watches."""

from __future__ import annotations

import base64
import json
import logging

import pytest

from service.settings import Settings
from tests.service.fake_backend import COLOURS, png, ready_client

MAX_IMAGES = 3
IMAGE = png(COLOURS["fresh"])
B64 = base64.b64encode(IMAGE).decode()
OVER = f"{MAX_IMAGES + 1} images in one request; the limit is {MAX_IMAGES} (CLIP_MAX_IMAGES_PER_REQUEST)"


@pytest.fixture(scope="module")
def client():
    with ready_client(Settings(max_images_per_request=MAX_IMAGES)) as (client, _):
        yield client


def post_form(client, n_images: int, part: str = "file", fields: int = 0):
    files = [(part, ("x.png", IMAGE, "image/png"))] * n_images + [(f"f{i}", (None, "v")) for i in range(fields)]
    return client.post("/embed/image", files=files)


def error(r, status: int) -> str:
    assert r.status_code == status, r.text
    return r.json()["error"]["message"]


@pytest.mark.parametrize("part", ["file", "files", "image", "images"])
def test_image_parts_may_have_any_of_four_names(client, part):
    r = post_form(client, 2, part)
    assert r.status_code == 200 and len(r.json()["embeddings"]) == 2, r.text


def test_another_part_name_is_422_naming_it(client):
    assert error(post_form(client, 1, "photo"), 422) == "unexpected file part 'photo'; name image parts 'file'"


def test_form_image_counts(client):
    assert post_form(client, MAX_IMAGES).status_code == 200
    assert error(post_form(client, MAX_IMAGES + 1), 413) == OVER  # counted by us: the limit's own words
    # one more and the form parser stops reading: the parts' 413
    assert error(post_form(client, MAX_IMAGES + 2), 413) == \
        f"too many parts in the form: Too many files. Maximum number of files is {MAX_IMAGES + 1}."
    assert error(post_form(client, 0, fields=1), 422) == "images: give at least one"


def test_a_form_may_carry_up_to_16_stray_fields(client):
    """Clients add fields of their own (a filename, a tag); a few are read and ignored, more are refused before
    they cost memory."""
    r = post_form(client, 1, fields=16)
    assert r.status_code == 200 and len(r.json()["embeddings"]) == 1, r.text
    assert error(post_form(client, 1, fields=17), 413) == \
        "too many parts in the form: Too many fields. Maximum number of fields is 16."


@pytest.mark.parametrize("body,boundary,reason", [
    (b"--xyz\r\nbad header\r\n\r\nabc\r\n--xyz--\r\n", "; boundary=xyz", "Invalid multipart data."),
    (b"--xyz\r\nContent-Disposition: form-data\r\n\r\nabc\r\n--xyz--\r\n", "; boundary=xyz",
     'The Content-Disposition header field "name" must be provided.'),
    (b"x", "", "Missing boundary in multipart."),
])
def test_a_malformed_form_is_400_saying_why(client, body, boundary, reason):
    r = client.post("/embed/image", content=body, headers={"content-type": "multipart/form-data" + boundary})
    assert error(r, 400) == f"malformed multipart body: {reason}"


def test_json_image_counts(client):
    r = client.post("/embed/image", json={"images": [B64] * MAX_IMAGES})
    assert r.status_code == 200 and len(r.json()["embeddings"]) == MAX_IMAGES, r.text
    assert error(client.post("/embed/image", json={"images": [B64] * (MAX_IMAGES + 1)}), 413) == OVER
    # a bad one is named by its place
    assert error(client.post("/embed/image", json={"images": [B64, "!!"]}), 400) == "images[1]: not valid base64"


def test_json_with_or_without_its_content_type(client):
    r = client.post("/embed/image", content=json.dumps({"images": [B64]}))  # no content type: read as JSON
    assert r.status_code == 200 and len(r.json()["embeddings"]) == 1, r.text
    r = client.post("/embed/image", content=b"x", headers={"content-type": "text/plain"})
    assert error(r, 415) == "content type 'text/plain' not supported; use multipart/form-data or application/json"


def test_the_access_log_counts_the_images(client, caplog):
    with caplog.at_level(logging.INFO, logger="service.access"):
        post_form(client, 2)
        client.post("/embed/image", json={"images": [B64] * 3})
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "service.access"
             and '"/embed/image"' in r.getMessage()]
    assert [(line["status"], line["items"]) for line in lines] == [(200, 2), (200, 3)], lines
