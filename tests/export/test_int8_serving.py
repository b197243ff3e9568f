"""The bundled model's int8 export served by the onnx backend, end to end, and the settings that guard it."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw
from pydantic import ValidationError

from service.settings import Settings
from tests.service.server import ServerProcess


def _red_circle() -> bytes:
    img = Image.new("RGB", (64, 64), "lightgray")
    ImageDraw.Draw(img).ellipse([14, 14, 50, 50], fill="red")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def int8_server(bundled_export_int8, tmp_path_factory):
    root, _ = bundled_export_int8
    proc = ServerProcess({"CLIP_BACKEND": "onnx", "CLIP_DEVICE": "cpu", "CLIP_PRECISION": "int8",
                          "CLIP_EXPORT_DIR": str(root)}, tmp_path_factory.mktemp("int8") / "server.log").wait_ready()
    yield proc
    proc.stop()


def test_int8_export_serves_embeddings_and_classification(int8_server, bundled):
    info = httpx.get(int8_server.url + "/info").json()
    assert (info["backend"], info["device"], info["precision"]) == ("onnx", "cpu", "int8")
    assert info["fingerprint"] == bundled.fingerprint  # the same model, so embeddings stay comparable

    png = _red_circle()
    r = httpx.post(int8_server.url + "/embed/image", files=[("file", ("c.png", png))], timeout=60)
    assert r.status_code == 200, r.text
    served = np.asarray(r.json()["embeddings"][0], dtype=np.float64)
    import torch

    from models.preprocess import eval_transform

    with torch.no_grad():
        pixels = eval_transform(bundled.preprocess)(Image.open(io.BytesIO(png)).convert("RGB"))[None]
        eager = bundled.model.encode_image(pixels, normalize=True)[0].double().numpy()
    assert float(served @ eager / np.linalg.norm(served)) >= 0.99  # the int8 gate's bound, over HTTP

    r = httpx.post(int8_server.url + "/classify", files=[("file", ("c.png", png))],
                   data={"labels": ["red circle", "blue square", "green star"]}, timeout=60)
    assert r.status_code == 200, r.text
    ranked = r.json()["results"][0]
    assert ranked[0]["label"] == "red circle" and ranked[0]["score"] > 0.9


def test_int8_needs_the_onnx_backend():
    with pytest.raises(ValidationError, match="CLIP_BACKEND=onnx"):
        Settings(precision="int8")


def test_int8_setting_refuses_an_export_of_another_precision(bundled_export):
    from service.backends.export_backend import ExportBackend

    with pytest.raises(ValueError, match="is a fp32 export"):
        ExportBackend(Settings(backend="onnx", export_dir=str(bundled_export[0]), precision="int8", device="cpu"))


def test_int8_export_is_refused_on_a_gpu_and_runs_on_cpu_under_auto(bundled_export_int8):
    from service.backends.export_backend import ExportBackend

    root = str(bundled_export_int8[0])
    with pytest.raises(ValueError, match="runs on CPU only"):
        ExportBackend(Settings(backend="onnx", export_dir=root, device="cuda"))
    backend = ExportBackend(Settings(backend="onnx", export_dir=root, device="auto"))
    assert (backend.device, backend.precision) == ("cpu", "int8")
