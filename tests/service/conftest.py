from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.service.server import ServerProcess


@pytest.fixture(scope="session")
def server(bundled_dir, tmp_path_factory):
    """The real server on the bundled model, shared by the service tests."""
    proc = ServerProcess({"CLIP_MODEL": str(bundled_dir), "CLIP_IMAGE_MAX_WAIT_MS": "20"},
                         tmp_path_factory.mktemp("server") / "server.log").wait_ready()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real photographs shipped with scikit-image."""
    from skimage import data

    return {"chelsea": data.chelsea(), "astronaut": data.astronaut(), "coffee": data.coffee(),
            "rocket": data.rocket()}


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def shape_image(colour: str, shape: str, seed: int = 0) -> Image.Image:
    """One rendered object, as the bundled model saw them in training (but a fresh random draw)."""
    import random

    from models.data.shapes import ShapeObject, render

    return render((ShapeObject(colour, shape, "large", "center"),), random.Random(seed), 64)


API_KEY = "test-key-123"
CORS_ORIGIN = "https://app.example.com"


@pytest.fixture(scope="session")
def keyed_server(bundled_dir, tmp_path_factory):
    """A second real server that requires `Authorization: Bearer test-key-123`, allows CORS from CORS_ORIGIN and
    caps bodies at 100,000 bytes (tests/service/test_auth_cors.py reads a 413 from it)."""
    proc = ServerProcess({"CLIP_MODEL": str(bundled_dir), "CLIP_API_KEY": API_KEY, "CLIP_CORS_ORIGINS": CORS_ORIGIN,
                          "CLIP_MAX_BODY_BYTES": "100000"},
                         tmp_path_factory.mktemp("keyed") / "server.log").wait_ready()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def other_model_dir(bundled_dir, tmp_path_factory):
    """The bundled model's architecture with other (perturbed) weights: another fingerprint, same dimensions."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("other-model") / "shapes-other"
    shutil.copytree(bundled_dir, out)
    weights = load_file(str(out / "open_clip_model.safetensors"))
    g = torch.Generator().manual_seed(1)
    save_file({k: (v + 0.01 * torch.randn(v.shape, generator=g, dtype=torch.float32).to(v.dtype)
                   if v.is_floating_point() else v).contiguous() for k, v in weights.items()},
              str(out / "open_clip_model.safetensors"))
    return out


@pytest.fixture(scope="session")
def other_server(other_model_dir, tmp_path_factory):
    """A real server of `other_model_dir`: answers carry another fingerprint than `server`'s."""
    proc = ServerProcess({"CLIP_MODEL": str(other_model_dir)},
                         tmp_path_factory.mktemp("other") / "server.log").wait_ready()
    yield proc
    proc.stop()
