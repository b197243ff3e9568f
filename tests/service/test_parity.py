"""Served-output parity for every backend: a server with CLIP_BACKEND=torch, and one with CLIP_BACKEND=onnx on an
export made with `python -m export onnx` (as users make it), answer what open_clip computes in-process, on
/embed/image, /embed/text (and /v1/embeddings) and /classify. The reference is open_clip alone: its model from the
checkpoint directory, its own eval transform, tokenizer and zero-shot classifier, nothing of this repository's.
(TensorRT needs a GPU: tests/gpu/test_export_paths.py.)

Tolerances: embeddings cosine >= 0.99999 per item (measured: 1 - 1e-7 for ONNX Runtime fp32 against eager
PyTorch, the same pixels and tokens on both sides); classification probabilities within 1e-4 absolute
(measured: 5e-7). These servers decode JPEGs at full size (CLIP_REDUCED_JPEG_DECODE=false), as open_clip's
transform does; the default reduced decoding is checked against full decoding at the end.
"""

from __future__ import annotations

import base64
import io
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import open_clip
import pytest
import torch
from open_clip import OPENAI_IMAGENET_TEMPLATES, build_zero_shot_classifier
from PIL import Image

from tests.service.conftest import encode, shape_image
from tests.service.server import ROOT, ServerProcess

COSINE_MIN = 0.99999
PROB_ATOL = 1e-4
PHOTOS = sorted((ROOT / "export" / "parity_images").glob("*.jpg"))
TEXTS = ["a red circle", "A BLUE SQUARE!!", "  a  green\tstar \n", "café crème & croissants", "東京の夜景",
         "an emoji 🐱 and a number 42", "&lt;b&gt;html&lt;/b&gt; entities", "x",
         "a very long caption " + "that keeps going and going " * 40]
LABELS = ["red circle", "blue square", "green star", "yellow heart", "purple cross", "cat", "astronaut", "rocket"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}.", "there is a {} here."]


@pytest.fixture(scope="module")
def reference(bundled_dir):
    """open_clip on its own: (model, eval transform, tokenizer) from the checkpoint directory."""
    model, _, transform = open_clip.create_model_and_transforms(f"local-dir:{bundled_dir}")
    return model.eval(), transform, open_clip.get_tokenizer(f"local-dir:{bundled_dir}")


@pytest.fixture(scope="module")
def onnx_export(bundled_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("served-onnx") / "shapes-rn-s"
    done = subprocess.run([sys.executable, "-m", "export", "onnx", "--model", str(bundled_dir), "--out", str(out),
                           "--parity-shapes", "8"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return out


@pytest.fixture(scope="module", params=["torch", "onnx"])
def served(request, bundled_dir, tmp_path_factory):
    """A server of each backend on the bundled model (one at a time: module scope groups the tests by backend)."""
    env = {"CLIP_MODEL": str(bundled_dir), "CLIP_BACKEND": request.param, "CLIP_DEVICE": "cpu",
           "CLIP_REDUCED_JPEG_DECODE": "false", "CLIP_IMAGE_MAX_WAIT_MS": "20"}
    if request.param == "onnx":
        env["CLIP_EXPORT_DIR"] = str(request.getfixturevalue("onnx_export"))
    proc = ServerProcess(env, tmp_path_factory.mktemp(f"parity-{request.param}") / "server.log").wait_ready()
    proc.backend = request.param
    yield proc
    proc.stop()


def test_the_server_runs_the_backend_asked_for_on_the_same_model(served, bundled):
    info = httpx.get(served.url + "/info", timeout=30).json()
    assert (info["backend"], info["device"], info["precision"]) == (served.backend, "cpu", "fp32")
    assert info["fingerprint"] == bundled.fingerprint, "every backend answers with the source model's fingerprint"


def test_image_embeddings_match_open_clip(served, reference):
    model, transform, _ = reference
    images = [Image.open(p) for p in PHOTOS] + [Image.open(PHOTOS[0]).convert("RGB").rotate(90, expand=True)]
    blobs = [p.read_bytes() for p in PHOTOS] + [encode(images[-1], "PNG")]  # real JPEGs, and a PNG
    r = httpx.post(served.url + "/embed/image", timeout=60, files=[("file", (f"{i}", b)) for i, b in enumerate(blobs)])
    assert r.status_code == 200, r.text
    _assert_same_vectors(np.array(r.json()["embeddings"]), _encode_images(model, transform, images))


def test_image_embeddings_match_for_json_base64_too(served, reference):
    model, transform, _ = reference
    r = httpx.post(served.url + "/embed/image", timeout=60,
                   json={"images": [base64.b64encode(p.read_bytes()).decode() for p in PHOTOS[:2]]})
    assert r.status_code == 200, r.text
    _assert_same_vectors(np.array(r.json()["embeddings"]),
                         _encode_images(model, transform, [Image.open(p) for p in PHOTOS[:2]]))


def test_text_embeddings_match_open_clip(served, reference):
    model, _, tokenizer = reference
    r = httpx.post(served.url + "/embed/text", json={"texts": TEXTS}, timeout=60)
    assert r.status_code == 200, r.text
    with torch.no_grad():
        ref = model.encode_text(tokenizer(TEXTS), normalize=True).numpy()
    _assert_same_vectors(np.array(r.json()["embeddings"]), ref)
    openai = httpx.post(served.url + "/v1/embeddings", timeout=60,
                        json={"model": "clip", "input": TEXTS, "encoding_format": "float"})
    _assert_same_vectors(np.array([d["embedding"] for d in openai.json()["data"]]), ref)


@pytest.mark.parametrize("templates", ["custom", "openai_imagenet"])
def test_classify_matches_open_clips_zero_shot_classifier(served, reference, templates):
    model, transform, tokenizer = reference
    images = [Image.open(PHOTOS[0]).convert("RGB"), shape_image("green", "star", seed=5),
              shape_image("red", "circle", seed=2)]
    oc_templates = OPENAI_IMAGENET_TEMPLATES if templates == "openai_imagenet" else TEMPLATES
    with torch.no_grad():
        weights = build_zero_shot_classifier(model, tokenizer, LABELS, oc_templates)  # [D, C]
        emb = model.encode_image(torch.stack([transform(i) for i in images]), normalize=True)
        probs = (model.logit_scale.exp() * emb @ weights).softmax(dim=-1).numpy()  # [N, C]
    sent = templates if templates == "openai_imagenet" else TEMPLATES
    for img, expected in zip(images, probs):
        r = httpx.post(served.url + "/classify", timeout=120, files=[("file", ("i.png", encode(img)))],
                       data={"labels": LABELS, "templates": sent})
        assert r.status_code == 200, r.text
        got = {x["label"]: x["score"] for x in r.json()["results"][0]}
        assert set(got) == set(LABELS)
        np.testing.assert_allclose([got[label] for label in LABELS], expected, atol=PROB_ATOL, rtol=0)
        assert r.json()["results"][0][0]["label"] == LABELS[int(expected.argmax())]


def test_reduced_jpeg_decoding_stays_close(server, reference, photos):
    """Large JPEGs are decoded at reduced size by default (Pillow draft): cosine >= 0.99 of full decoding."""
    model, transform, _ = reference
    images = [Image.fromarray(a).resize((a.shape[1] * 3, a.shape[0] * 3), Image.BICUBIC) for a in photos.values()]
    blobs = [encode(i, "JPEG", quality=92) for i in images]
    r = httpx.post(server.url + "/embed/image", timeout=60, files=[("file", (f"{i}", b)) for i, b in enumerate(blobs)])
    full = _encode_images(model, transform, [Image.open(io.BytesIO(b)) for b in blobs])
    cos = (np.array(r.json()["embeddings"]) * full).sum(axis=1)
    assert cos.min() >= 0.99, cos


def _encode_images(model, transform, images: list[Image.Image]) -> np.ndarray:
    with torch.no_grad():
        return model.encode_image(torch.stack([transform(i) for i in images]), normalize=True).numpy()


def _assert_same_vectors(served: np.ndarray, ref: np.ndarray) -> None:
    assert served.shape == ref.shape, (served.shape, ref.shape)
    assert np.allclose(np.linalg.norm(served, axis=1), 1, atol=1e-5)
    cos = (served * ref).sum(axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= COSINE_MIN, f"cosine per item {cos}"
