"""Every endpoint and input form, against the real server over HTTP."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.service.conftest import encode, shape_image


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_health_ready_info_metrics(server):
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server.url + "/readyz").status_code == 200
    info = httpx.get(server.url + "/info").json()
    assert info["dimensions"] == 128 and info["backend"] == "torch" and info["device"] == "cpu"
    assert info["batching"]["image_max_batch"] >= 1 and "openai_imagenet" in info["template_sets"]
    assert info["limits"]["max_prompts"] == 10_000 and info["limits"]["max_templates"] == 100
    metrics = httpx.get(server.url + "/metrics")
    assert metrics.status_code == 200 and "clip_model_info{" in metrics.text
    assert f'fingerprint="{info["fingerprint"]}"' in metrics.text


def test_embed_image_multipart_json_base64_and_data_uri(server):
    red = encode(shape_image("red", "circle"))
    blue = encode(shape_image("blue", "square"), "JPEG")
    multi = httpx.post(server.url + "/embed/image", files=[("file", ("a.png", red)), ("file", ("b.jpg", blue))])
    assert multi.status_code == 200, multi.text
    body = multi.json()
    assert body["dimensions"] == 128 and len(body["embeddings"]) == 2 and len(body["fingerprint"]) == 16
    emb = np.array(body["embeddings"])
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    js = httpx.post(server.url + "/embed/image",
                    json={"images": [_b64(red), "data:image/jpeg;base64," + _b64(blue)]}).json()
    assert np.allclose(np.array(js["embeddings"]), emb, atol=1e-5), "same images, same order, same embeddings"


def test_embed_text_keeps_order_and_truncates_long_text(server):
    texts = ["a red circle", "a blue square", "x " * 500, "🙂 ünïcödé"]
    body = httpx.post(server.url + "/embed/text", json={"texts": texts}).json()
    emb = np.array(body["embeddings"])
    assert emb.shape == (4, 128)
    again = np.array(httpx.post(server.url + "/embed/text", json={"texts": texts[::-1]}).json()["embeddings"])
    assert np.allclose(again[::-1], emb, atol=1e-6)


def test_classify_ranks_a_red_circle(server):
    img = encode(shape_image("red", "circle"))
    r = httpx.post(server.url + "/classify", files=[("file", ("c.png", img))],
                   data={"labels": ["red circle", "blue square"]})
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    assert res[0]["label"] == "red circle" and res[0]["score"] > res[1]["score"]
    assert abs(sum(x["score"] for x in res) - 1) < 1e-5


def test_classify_json_forms_templates_and_top_k(server):
    imgs = [_b64(encode(shape_image("green", "triangle"))), _b64(encode(shape_image("yellow", "star")))]
    labels = ["green triangle", "yellow star", "blue heart", "pink cross"]
    r = httpx.post(server.url + "/classify", json={"images": imgs, "labels": labels, "top_k": 2,
                                                   "templates": ["a {}.", "a drawing of a {}."]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [len(x) for x in results] == [2, 2]
    assert results[0][0]["label"] == "green triangle" and results[1][0]["label"] == "yellow star"
    one = httpx.post(server.url + "/classify", json={"image": imgs[0], "labels": labels, "templates": "simple"})
    assert one.status_code == 200 and len(one.json()["results"]) == 1
    builtin = httpx.post(server.url + "/classify", json={"image": imgs[0], "labels": labels,
                                                        "templates": "openai_imagenet"},
                         timeout=120)  # 320 cold prompts: seconds on a busy 2-core machine, over httpx's 5 s
    assert builtin.status_code == 200
    form = httpx.post(server.url + "/classify", files=[("file", ("a.png", base64.b64decode(imgs[1])))],
                      data={"labels": labels, "top_k": "1", "templates": "a {}."})
    assert form.status_code == 200 and len(form.json()["results"][0]) == 1


def test_labelsets_put_get_use_delete(server):
    url = server.url + "/labelsets/shapes-demo"
    r = httpx.put(url, json={"labels": ["red circle", "blue square", "green star"], "templates": "simple"})
    assert r.status_code == 200, r.text
    assert r.json()["labels"] == ["red circle", "blue square", "green star"]
    assert httpx.get(url).json()["name"] == "shapes-demo"
    assert any(x["name"] == "shapes-demo" for x in httpx.get(server.url + "/labelsets").json()["labelsets"])
    img = _b64(encode(shape_image("blue", "square")))
    res = httpx.post(server.url + "/classify", json={"image": img, "labelset": "shapes-demo"}).json()["results"]
    assert res[0][0]["label"] == "blue square"
    assert httpx.delete(url).status_code == 204
    missing = httpx.post(server.url + "/classify", json={"image": img, "labelset": "shapes-demo"})
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"


@pytest.mark.parametrize("method,path,kwargs,status,etype", [
    ("post", "/embed/text", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400,
     "invalid_input"),
    ("post", "/embed/text", {"json": {"texts": "not a list"}}, 422, "invalid_request"),
    ("post", "/embed/text", {"json": {"texts": []}}, 422, "invalid_request"),
    ("post", "/embed/text", {"content": b"texts=a", "headers": {"content-type": "text/plain"}}, 415,
     "unsupported_media_type"),
    ("post", "/embed/image", {"json": {"images": ["@@@"]}}, 400, "invalid_input"),
    ("post", "/embed/image", {"json": {"images": ["data:text/plain;base64,aGVsbG8="]}}, 415,
     "unsupported_media_type"),
    ("post", "/embed/image", {"files": [("file", ("x.txt", b"hello world"))]}, 400, "invalid_input"),
    ("post", "/classify", {"json": {"image": "aGVsbG8=", "labels": []}}, 422, "invalid_request"),
    ("post", "/classify", {"json": {"image": "aGVsbG8="}}, 422, "invalid_request"),
    ("post", "/classify", {"json": {"image": "aGVsbG8=", "labels": ["a"], "templates": ["no slot"]}}, 422,
     "invalid_request"),
    ("post", "/classify", {"json": {"image": "aGVsbG8=", "labels": ["a"], "templates": "nope"}}, 422,
     "invalid_request"),
    ("get", "/nope", {}, 404, "not_found"),
    ("get", "/embed/text", {}, 405, "method_not_allowed"),
])
def test_errors_share_one_json_shape(server, method, path, kwargs, status, etype):
    r = getattr(httpx, method)(server.url + path, **kwargs)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["type"] == etype and err["message"]


def test_too_many_items_is_413(server):
    r = httpx.post(server.url + "/embed/text", json={"texts": ["a"] * 257})
    assert r.status_code == 413 and "CLIP_MAX_TEXTS_PER_REQUEST" in r.json()["error"]["message"]


def test_server_keeps_serving_after_bad_input(server):
    httpx.post(server.url + "/embed/image", files=[("file", ("x.png", b"\x89PNG\r\n\x1a\n"))])
    ok = httpx.post(server.url + "/embed/text", json={"texts": ["still alive"]})
    assert ok.status_code == 200


def test_image_modes_and_shapes_all_embed(server):
    base = shape_image("purple", "heart").resize((120, 90))
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    palette = base.convert("P", palette=Image.ADAPTIVE)
    palette.info["transparency"] = 0
    arr16 = (np.asarray(base.convert("L"), dtype=np.uint16) * 257)
    frames = [base, shape_image("red", "star").resize((120, 90))]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    cases = {
        "cmyk": encode(base.convert("CMYK"), "JPEG"),
        "16bit": encode(Image.fromarray(arr16), "PNG"),
        "palette_transparent": encode(palette, "PNG", transparency=0),
        "rgba": encode(rgba, "PNG"),
        "animated_gif": gif,
        "one_pixel": encode(Image.new("RGB", (1, 1), "red"), "PNG"),
        "thin_8x4000": encode(Image.new("RGB", (8, 4000), "blue"), "PNG"),
        "bmp": encode(base, "BMP"), "webp": encode(base, "WEBP"), "tiff": encode(base, "TIFF"),
        "grey_1bit": encode(base.convert("1"), "PNG"), "la": encode(base.convert("LA"), "PNG"),
    }
    for name, data in cases.items():
        r = httpx.post(server.url + "/embed/image", files=[("file", (name, data))])
        assert r.status_code == 200, (name, r.text)
        assert len(r.json()["embeddings"][0]) == 128


def test_exif_orientation_is_applied(server):
    img = shape_image("orange", "triangle").resize((96, 64))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers rotate 90 degrees clockwise on display
    stored = img.transpose(Image.Transpose.ROTATE_90)  # what a camera would write for orientation 6
    with_exif = encode(stored, "JPEG", exif=exif, quality=95)
    upright = encode(img, "JPEG", quality=95)
    a = np.array(httpx.post(server.url + "/embed/image", files=[("file", ("a.jpg", with_exif))]).json()["embeddings"])
    b = np.array(httpx.post(server.url + "/embed/image", files=[("file", ("b.jpg", upright))]).json()["embeddings"])
    no_exif = encode(stored, "JPEG", quality=95)
    c = np.array(httpx.post(server.url + "/embed/image", files=[("file", ("c.jpg", no_exif))]).json()["embeddings"])
    ab, cb = float((a @ b.T)[0, 0]), float((c @ b.T)[0, 0])
    assert ab > cb and ab > 0.99, (ab, cb)
