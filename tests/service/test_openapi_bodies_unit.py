"""The OpenAPI schema documents every request body (service/schemas.py body_doc): a required JSON body whose schema
is a component of the spec, and the multipart/form-data twin where a route takes uploads. Clients generated from
the spec, /docs, and the schema fuzz (tests/service/test_schemathesis.py) all read these. In-process, and the
access log's item count with it."""

from __future__ import annotations

import json
import logging

import pytest

from service.settings import Settings
from tests.service.fake_backend import named_app, ready_client

BODIES = {  # (method, path) -> (JSON schema component, multipart properties or None)
    ("post", "/embed/image"): ("EmbedImagesRequest", {"file"}),
    ("post", "/embed/text"): ("EmbedTextsRequest", None),
    ("post", "/classify"): ("ClassifyRequest", {"file", "labels"}),
    ("put", "/labelsets/{name}"): ("LabelSetRequest", None),
    ("post", "/v1/embeddings"): ("OpenAIEmbeddingsRequest", None),
}


@pytest.fixture(scope="module")
def spec() -> dict:
    app, _ = named_app(Settings())
    return app.openapi()


@pytest.mark.parametrize("method,path", list(BODIES))
def test_each_body_is_documented(spec, method, path):
    component, multipart = BODIES[(method, path)]
    body = spec["paths"][path][method]["requestBody"]
    assert body["required"] is True
    content = body["content"]
    assert content["application/json"]["schema"] == {"$ref": f"#/components/schemas/{component}"}
    assert component in spec["components"]["schemas"]
    if multipart is None:
        assert set(content) == {"application/json"}, set(content)
    else:
        assert set(content) == {"application/json", "multipart/form-data"}, set(content)
        form = content["multipart/form-data"]["schema"]
        assert form["type"] == "object" and multipart <= set(form["properties"]), form
        assert form["properties"]["file"]["items"]["format"] == "binary"


def test_the_access_log_counts_a_requests_items(caplog):
    with ready_client(Settings()) as (client, _), caplog.at_level(logging.INFO, logger="service.access"):
        assert client.post("/embed/text", json={"texts": ["a", "b", "c"]}).status_code == 200
    (line,) = [json.loads(r.getMessage()) for r in caplog.records if r.name == "service.access"
               and '"/embed/text"' in r.getMessage()]
    assert line["status"] == 200 and line["items"] == 3, line
