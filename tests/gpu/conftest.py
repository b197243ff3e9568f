"""Fixtures for the GPU tests. This directory runs on GPU machines that have only torch, torchvision, numpy,
Pillow, pytest, open_clip (and maybe onnx/onnxruntime): import nothing else here or in the test modules
(no service.* module that pulls in FastAPI, no scikit-image; photos come from export/parity_images).
scripts/gpu_check.sh runs `pytest tests/gpu`; on a machine without CUDA every test here is skipped."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

PHOTO_DIR = Path(__file__).resolve().parents[2] / "export" / "parity_images"


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """The four real photos shipped for parity checks (scikit-image's sample photos, 256 px short side)."""
    return {p.stem: np.asarray(Image.open(p).convert("RGB")) for p in sorted(PHOTO_DIR.glob("*.jpg"))}


def jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def _export(bundled, bundled_dir, out: Path, **options):
    pytest.importorskip("onnx", reason="the ONNX paths need onnx (scripts/gpu_wheels.sh --onnx)")
    from export.onnx_export import OnnxOptions, export_onnx
    from export.source import source_spec

    return out, export_onnx(bundled, source_spec(str(bundled_dir)), out, OnnxOptions(**options))


@pytest.fixture(scope="session")
def bundled_export(bundled, bundled_dir, tmp_path_factory):
    """fp32 ONNX export of the bundled model (parity checked on the way); skipped without onnx."""
    return _export(bundled, bundled_dir, tmp_path_factory.mktemp("bundled-fp32"))


@pytest.fixture(scope="session")
def bundled_export_fp16(bundled, bundled_dir, tmp_path_factory):
    return _export(bundled, bundled_dir, tmp_path_factory.mktemp("bundled-fp16"), fp16=True)


@pytest.fixture
def copy_export(tmp_path):
    def copy(src: Path) -> Path:
        dst = tmp_path / src.name
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("cache"))
        return dst

    return copy
