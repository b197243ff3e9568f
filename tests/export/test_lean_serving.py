"""PyTorch-free serving: `python -m service` with CLIP_BACKEND=onnx imports no torch, torchvision or open_clip, and
answers /embed/image, /embed/text and /classify; its embeddings equal those of the torch-preprocessed,
open_clip-tokenised path.

The server is the real entry point (`python -m service`, run through runpy) in a child process; when it exits
(SIGTERM, after the requests) it writes the heavy modules it had loaded to a file."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.export.lean_server import PHOTOS, ROOT, serve_and_probe


def test_onnx_server_imports_no_torch_torchvision_or_open_clip(bundled_export, bundled, tmp_path):
    export_dir, manifest = bundled_export
    heavy, answers = serve_and_probe(export_dir, tmp_path)
    assert heavy == [], f"the onnx server loaded {heavy}"
    # the lean path's embeddings are the torch-preprocessed, open_clip-tokenised path's
    from models.preprocess import eval_transform

    pixels = eval_transform(bundled.preprocess)(Image.open(io.BytesIO(PHOTOS[0].read_bytes())).convert("RGB"))
    with_torch = bundled.model.encode_image(pixels[None], normalize=True).detach().numpy()[0]
    served = np.asarray(answers["image"]["embeddings"][0], dtype=np.float64)
    assert float(served @ with_torch) >= 0.99999
    tokens = bundled.tokenizer(["a photo of a cat", "Ünïcödé façade ☕"])
    text = bundled.model.encode_text(tokens, normalize=True).detach().numpy()
    served_text = np.asarray(answers["text"]["embeddings"], dtype=np.float64)
    assert (served_text * text).sum(-1).min() >= 0.99999
    assert answers["classify"]["fingerprint"] == manifest.fingerprint


def test_a_sigmoid_model_export_serves_its_sigmoid_without_torch(siglip_export, siglip, open_clip_head, tmp_path):
    """A SigLIP-style export carries its logit scale and bias (manifest.json): served without PyTorch, /classify gives
    open_clip's sigmoid(logit_scale x cosine + logit_bias) per label, not a softmax."""
    export_dir, manifest = siglip_export
    assert manifest.activation == siglip.activation and manifest.activation.name == "sigmoid"
    heavy, answers = serve_and_probe(export_dir, tmp_path)
    assert heavy == [], f"the onnx server loaded {heavy}"
    body = answers["classify"]
    assert body["activation"] == "sigmoid" and body["scores"] == "probability"
    labels = ["a cat", "a rocket"]  # serve_and_probe's, with the default template
    _, expected = open_clip_head(siglip, [Image.open(PHOTOS[0])], [f"a photo of a {x}." for x in labels])
    got = [{x["label"]: x["score"] for x in body["results"][0]}[label] for label in labels]
    np.testing.assert_allclose(got, expected[0], rtol=2e-3, atol=1e-7)


# ViT-B-32 served without torch: tests/export/test_onnx_export.py, the file of the other ViT-B-32 export tests


BLOCKED = "import sys; sys.modules.update(torch=None, open_clip=None, onnx=None); "  # import torch now fails


def test_exporting_without_the_torch_extra_says_which_extra():
    code = BLOCKED + ("import runpy; sys.argv = ['export', 'onnx', '--model', 'x', '--out', 'y']; "
                      "runpy.run_module('export', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "needs PyTorch" in r.stderr and "clip-serve[torch]" in r.stderr, r.stderr


def test_the_torch_backend_without_the_torch_extra_says_how_to_serve_an_export(monkeypatch):
    from export.errors import MissingDependencyError
    from service.backends import load_backend
    from service.settings import Settings

    monkeypatch.setitem(sys.modules, "service.backends.torch_backend", None)  # as if torch were not installed
    with pytest.raises(MissingDependencyError, match=r"clip-serve\[torch\].*CLIP_BACKEND=onnx CLIP_EXPORT_DIR"):
        load_backend(Settings(backend="torch"))
