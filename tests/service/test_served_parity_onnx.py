"""A server with CLIP_BACKEND=onnx answers what open_clip computes in-process: image and text embeddings and
zero-shot scores. The reference is open_clip alone (its model from the checkpoint directory, its own eval
transform, tokenizer and zero-shot classifier); the export is made with `python -m export onnx`, as users do.

Tolerances (ONNX Runtime fp32 against eager PyTorch; the pixels and tokens are the same on both sides):
embeddings cosine >= 0.99999 per item; classification probabilities within 1e-4 absolute.
JPEGs are decoded at full size here (CLIP_REDUCED_JPEG_DECODE=false), as open_clip's transform does; reduced
decoding is checked against full decoding by tests/service/test_parity.py.
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
def onnx_export(bundled_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("served-onnx") / "shapes-rn-s"
    done = subprocess.run([sys.executable, "-m", "export", "onnx", "--model", str(bundled_dir), "--out", str(out),
                           "--parity-shapes", "8"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def onnx_server(onnx_export, tmp_path_factory):
    proc = ServerProcess({"CLIP_BACKEND": "onnx", "CLIP_EXPORT_DIR": str(onnx_export), "CLIP_DEVICE": "cpu",
                          "CLIP_REDUCED_JPEG_DECODE": "false", "CLIP_IMAGE_MAX_WAIT_MS": "20"},
                         tmp_path_factory.mktemp("served-onnx-log") / "server.log").wait_ready()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def reference(bundled_dir):
    """open_clip on its own: (model, eval transform, tokenizer) from the checkpoint directory."""
    model, _, transform = open_clip.create_model_and_transforms(f"local-dir:{bundled_dir}")
    return model.eval(), transform, open_clip.get_tokenizer(f"local-dir:{bundled_dir}")


def test_the_server_runs_onnx_runtime_on_the_same_model(onnx_server, bundled):
    info = httpx.get(onnx_server.url + "/info", timeout=30).json()
    assert (info["backend"], info["device"], info["precision"]) == ("onnx", "cpu", "fp32")
    assert info["fingerprint"] == bundled.fingerprint, "an export answers with its source model's fingerprint"


def test_image_embeddings_match_open_clip(onnx_server, reference):
    model, transform, _ = reference
    images = [Image.open(p) for p in PHOTOS] + [Image.open(PHOTOS[0]).convert("RGB").rotate(90, expand=True)]
    blobs = [p.read_bytes() for p in PHOTOS] + [encode(images[-1], "PNG")]  # real JPEGs, and a PNG
    r = httpx.post(onnx_server.url + "/embed/image", timeout=60,
                   files=[("file", (f"{i}", b)) for i, b in enumerate(blobs)])
    assert r.status_code == 200, r.text
    with torch.no_grad():
        ref = model.encode_image(torch.stack([transform(i) for i in images]), normalize=True).numpy()
    _assert_same_vectors(np.array(r.json()["embeddings"]), ref)


def test_image_embeddings_match_for_json_base64_too(onnx_server, reference):
    model, transform, _ = reference
    r = httpx.post(onnx_server.url + "/embed/image", timeout=60,
                   json={"images": [base64.b64encode(p.read_bytes()).decode() for p in PHOTOS[:2]]})
    assert r.status_code == 200, r.text
    with torch.no_grad():
        ref = model.encode_image(torch.stack([transform(Image.open(p)) for p in PHOTOS[:2]]), normalize=True)
    _assert_same_vectors(np.array(r.json()["embeddings"]), ref.numpy())


def test_text_embeddings_match_open_clip(onnx_server, reference):
    model, _, tokenizer = reference
    r = httpx.post(onnx_server.url + "/embed/text", json={"texts": TEXTS}, timeout=60)
    assert r.status_code == 200, r.text
    with torch.no_grad():
        ref = model.encode_text(tokenizer(TEXTS), normalize=True).numpy()
    _assert_same_vectors(np.array(r.json()["embeddings"]), ref)
    openai = httpx.post(onnx_server.url + "/v1/embeddings", timeout=60,
                        json={"model": "clip", "input": TEXTS, "encoding_format": "float"})
    _assert_same_vectors(np.array([d["embedding"] for d in openai.json()["data"]]), ref)


@pytest.mark.parametrize("templates", ["custom", "openai_imagenet"])
def test_classify_matches_open_clips_zero_shot_classifier(onnx_server, reference, templates):
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
        r = httpx.post(onnx_server.url + "/classify", timeout=120, files=[("file", ("i.png", encode(img)))],
                       data={"labels": LABELS, "templates": sent})
        assert r.status_code == 200, r.text
        got = {x["label"]: x["score"] for x in r.json()["results"][0]}
        assert set(got) == set(LABELS)
        np.testing.assert_allclose([got[label] for label in LABELS], expected, atol=PROB_ATOL, rtol=0)
        assert r.json()["results"][0][0]["label"] == LABELS[int(expected.argmax())]


def _assert_same_vectors(served: np.ndarray, ref: np.ndarray) -> None:
    assert served.shape == ref.shape, (served.shape, ref.shape)
    assert np.allclose(np.linalg.norm(served, axis=1), 1, atol=1e-5)
    cos = (served * ref).sum(axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= COSINE_MIN, f"cosine per item {cos}"
