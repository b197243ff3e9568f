"""POST /classify's inputs in-process (service/inputs.py), on the app with a fake backend whose encoders record the
prompts they see (tests/service/fake_backend.py): labels, templates and stored label sets from JSON and from form
fields, and image URL downloads that stop when the client leaves. The real server's tests (test_api.py,
test_labelsets.py, test_client_resets.py) check the same end to end; these run in seconds, in the process the
mutation check (make mutation) watches."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
from types import SimpleNamespace
from urllib.parse import quote

import pytest
from starlette.requests import Request

from models.prompts import TEMPLATE_SETS
from service import inputs
from service.errors import ClientGone, InvalidField, PayloadTooLarge
from service.labelset_store import check_name, clean_labels
from service.settings import Settings
from tests.service.fake_backend import COLOURS, png, ready_client

MAX_LABELS, MAX_IMAGES = 5, 3
IMAGE = png(COLOURS["fresh"])
B64 = base64.b64encode(IMAGE).decode()
_SERIAL = itertools.count()


def new_labels(n: int = 2) -> list[str]:
    """Labels no earlier request sent: the server caches text embeddings, and a cached prompt is never encoded."""
    return [f"label {next(_SERIAL)}" for _ in range(n)]


@pytest.fixture(scope="module")
def app():
    with ready_client(Settings(max_labels=MAX_LABELS, max_images_per_request=MAX_IMAGES)) as client_backend:
        yield client_backend


def classify_form(app, fields: list[tuple[str, str]], n_images: int = 1):
    """POST /classify as multipart/form-data: `n_images` image parts and `fields`; returns (response, prompts
    encoded)."""
    client, backend = app
    before = len(backend.encoded)
    r = client.post("/classify", files=[("file", ("x.png", IMAGE, "image/png"))] * n_images +
                    [(k, (None, v)) for k, v in fields])
    return r, [name for name in backend.encoded[before:] if name not in COLOURS]


def labels_of(r) -> list[str]:
    assert r.status_code == 200, r.text
    return sorted(s["label"] for s in r.json()["results"][0])


# --- form fields -------------------------------------------------------------------------------------------------
def test_form_labels_and_a_list_of_templates(app):
    labels = new_labels()
    r, prompts = classify_form(app, [("labels", labels[0]), ("labels", labels[1]), ("templates", "a {}."),
                                     ("templates", "b {}!")])
    assert labels_of(r) == sorted(labels)
    assert sorted(prompts) == sorted(f"{t.replace('{}', x)}" for x in labels for t in ("a {}.", "b {}!"))


def test_one_form_template_with_a_slot_is_a_template(app):
    labels = new_labels()
    r, prompts = classify_form(app, [("labels", x) for x in labels] + [("templates", "one {} here")])
    assert labels_of(r) == sorted(labels) and sorted(prompts) == sorted(f"one {x} here" for x in labels)


def test_one_form_template_without_a_slot_names_a_built_in_set(app):
    labels = new_labels(1)
    r, prompts = classify_form(app, [("labels", labels[0]), ("templates", "simple")])
    assert labels_of(r) == labels
    assert sorted(prompts) == sorted(t.replace("{}", labels[0]) for t in TEMPLATE_SETS["simple"]), prompts


def test_no_form_templates_is_the_default_template(app):
    labels = new_labels(1)
    r, prompts = classify_form(app, [("labels", labels[0])])
    assert labels_of(r) == labels and prompts == [f"a photo of a {labels[0]}."]


def test_form_top_k(app):
    r, _ = classify_form(app, [("labels", x) for x in new_labels(3)] + [("top_k", "2")])
    assert r.status_code == 200 and len(r.json()["results"][0]) == 2, r.text


def test_a_form_of_as_many_labels_as_allowed(app):
    """The form may carry CLIP_MAX_LABELS labels besides its other fields; one more is the labels' 413."""
    labels = new_labels(MAX_LABELS + 1)
    fields = [("templates", "a {}"), ("templates", "b {}"), ("top_k", "1")]
    r, _ = classify_form(app, [("labels", x) for x in labels[:MAX_LABELS]] + fields)
    assert r.status_code == 200, r.text
    r, _ = classify_form(app, [("labels", x) for x in labels] + fields)
    assert r.status_code == 413 and "CLIP_MAX_LABELS" in r.json()["error"]["message"], r.text


def test_a_form_may_name_a_stored_label_set(app):
    client, _ = app
    labels = new_labels()
    assert client.put("/labelsets/form-set", json={"labels": labels, "templates": ["it is {}"]}).status_code == 200
    r, _ = classify_form(app, [("labelset", "form-set")])
    assert labels_of(r) == sorted(labels)


def test_a_form_without_labels_or_a_label_set_is_422(app):
    r, _ = classify_form(app, [("templates", "a {}")])
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"] == "labels: required (or name a stored `labelset`)"


# --- images ---------------------------------------------------------------------------------------------------------
def test_json_images_or_one_image(app):
    client, _ = app
    labels = new_labels()
    r = client.post("/classify", json={"images": [B64, B64], "labels": labels})
    assert r.status_code == 200 and len(r.json()["results"]) == 2, r.text
    r = client.post("/classify", json={"image": B64, "labels": labels})
    assert r.status_code == 200 and len(r.json()["results"]) == 1, r.text
    r = client.post("/classify", content=json.dumps({"image": B64, "labels": labels}))  # no content type: JSON
    assert r.status_code == 200 and len(r.json()["results"]) == 1, r.text


@pytest.mark.parametrize("body,status,message", [
    ({"images": [B64], "image": B64}, 422, "give either `images` or `image`, not both"),
    ({}, 422, "images: give at least one"),
    ({"images": []}, 422, "images: give at least one"),
    ({"images": [B64] * (MAX_IMAGES + 1)}, 413,
     f"{MAX_IMAGES + 1} images in one request; the limit is {MAX_IMAGES} (CLIP_MAX_IMAGES_PER_REQUEST)"),
])
def test_json_image_refusals(app, body, status, message):
    client, backend = app
    before = len(backend.encoded)
    r = client.post("/classify", json={**body, "labels": ["a", "b"]})
    assert r.status_code == status and r.json()["error"]["message"] == message, r.text
    assert len(backend.encoded) == before


def test_form_image_counts(app):
    r, _ = classify_form(app, [("labels", x) for x in new_labels()], n_images=MAX_IMAGES)
    assert r.status_code == 200 and len(r.json()["results"]) == MAX_IMAGES, r.text
    r, _ = classify_form(app, [("labels", "a"), ("labels", "b")], n_images=MAX_IMAGES + 1)
    assert r.status_code == 413, r.text
    assert r.json()["error"]["message"] == \
        f"{MAX_IMAGES + 1} images in one request; the limit is {MAX_IMAGES} (CLIP_MAX_IMAGES_PER_REQUEST)"
    r, _ = classify_form(app, [("labels", "a"), ("labels", "b")], n_images=0)
    assert r.status_code == 422 and r.json()["error"]["message"] == "images: give at least one", r.text


def test_another_content_type_is_415(app):
    client, _ = app
    r = client.post("/classify", content=b"labels=a", headers={"content-type": "text/plain"})
    assert r.status_code == 415, r.text
    assert r.json()["error"]["message"] == \
        "content type 'text/plain' not supported; use multipart/form-data or application/json"


def test_the_access_log_counts_the_images(app, caplog):
    client, _ = app
    with caplog.at_level(logging.INFO, logger="service.access"):
        classify_form(app, [("labels", "a"), ("labels", "b")], n_images=2)
        client.post("/classify", json={"images": [B64] * 3, "labels": ["a", "b"]})
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "service.access"
             and '"/classify"' in r.getMessage()]
    assert [(line["status"], line["items"]) for line in lines] == [(200, 2), (200, 3)], lines


# --- stored label sets -----------------------------------------------------------------------------------------------
def test_a_stored_label_set_gives_its_labels_and_templates(app):
    client, backend = app
    labels = new_labels()
    r = client.put("/labelsets/json-set", json={"labels": labels, "templates": ["x {} y", "z {}"]})
    assert r.status_code == 200, r.text
    before = len(backend.encoded)
    r = client.post("/classify", json={"image": base64.b64encode(IMAGE).decode(), "labelset": "json-set"})
    assert labels_of(r) == sorted(labels)
    # its labels and templates are the ones whose classifier PUT computed: no prompt is encoded again
    assert [n for n in backend.encoded[before:] if n not in COLOURS] == []


def test_labels_and_a_label_set_together_are_422(app):
    client, _ = app
    client.put("/labelsets/both-set", json={"labels": new_labels()})
    r = client.post("/classify", json={"image": base64.b64encode(IMAGE).decode(), "labelset": "both-set",
                                       "labels": ["a", "b"]})
    assert r.status_code == 422 and r.json()["error"]["message"] == "give either `labels` or `labelset`, not both"


def test_an_unknown_label_set_is_404_saying_how_to_create_it(app):
    client, _ = app
    r = client.post("/classify", json={"image": base64.b64encode(IMAGE).decode(), "labelset": "never-stored"})
    assert r.status_code == 404, r.text
    assert r.json()["error"]["message"] == \
        "no label set named 'never-stored'; create it with PUT /labelsets/never-stored"


# --- image URLs stop when the client leaves ----------------------------------------------------------------------
def test_url_downloads_stop_when_the_client_leaves():
    """The download never ends; the client's disconnect must end the wait (ClientGone) and cancel the download."""
    cancelled = asyncio.Event()

    class Endless:
        async def fetch(self, url: str, budget) -> bytes:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

    async def receive() -> dict:
        return {"type": "http.disconnect"}

    state = SimpleNamespace(url_fetcher=Endless(), settings=Settings())
    request = Request({"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b"",
                       "app": SimpleNamespace(state=state)}, receive)

    async def run() -> None:
        with pytest.raises(ClientGone):
            await asyncio.wait_for(inputs._image_bytes(request, ["https://img.example/a.png"]), 10)
        await asyncio.wait_for(cancelled.wait(), 10)

    asyncio.run(run())


# --- labels and label-set names (service/labelset_store.py) ------------------------------------------------------
def test_labels_are_stripped_and_kept_in_order():
    assert clean_labels([" b ", "a", "c\t"], MAX_LABELS) == ("b", "a", "c")


@pytest.mark.parametrize("labels,error,message", [
    ([], InvalidField, "labels: give at least one"),
    ([str(i) for i in range(MAX_LABELS + 1)], PayloadTooLarge,
     f"{MAX_LABELS + 1} labels in one request; the limit is {MAX_LABELS} (CLIP_MAX_LABELS)"),
    (["a", " "], InvalidField, "labels: every label must be a non-empty string"),
    (["c", "a", "b", " b", "a"], InvalidField, "labels: 'a' appears more than once"),  # the first that has a twin
    (["x" * 100, "x" * 100 + " "], InvalidField, f"labels: {'x' * 80!r} appears more than once"),  # cut at 80
])
def test_label_refusals(labels, error, message):
    with pytest.raises(error) as err:
        clean_labels(labels, MAX_LABELS)
    assert err.value.message == message


@pytest.mark.parametrize("name", ["a", "A-z_0.9", "x" * 64])
def test_label_set_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "x" * 65, "a b", "a/b", "ä", "a\n"])
def test_bad_label_set_names_are_422_saying_what_a_name_may_hold(app, name):
    with pytest.raises(InvalidField) as err:
        check_name(name)
    assert err.value.message == "name: 1-64 characters from letters, digits, '_', '.', '-'"
    client, _ = app
    if name and "/" not in name:  # a URL path carries the others, escaped ("a%2Fb" is no route: 404)
        r = client.put(f"/labelsets/{quote(name, safe='')}", json={"labels": ["a"]})
        assert r.status_code == 422 and r.json()["error"]["message"] == err.value.message, r.text
