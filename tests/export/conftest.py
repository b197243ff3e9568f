"""Exports made once per test session and shared (a ViT-B-32 export takes a while on a small CPU).

Tests that damage an export work on a copy (`copy_export`), never on these.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from export.manifest import Manifest


def _export(loaded, spec, out: Path, **options) -> tuple[Path, Manifest]:
    from export.onnx_export import OnnxOptions, export_onnx

    return out, export_onnx(loaded, spec, out, OnnxOptions(**options))


@pytest.fixture(scope="session")
def bundled_spec(bundled_dir):
    from export.source import source_spec

    return source_spec(str(bundled_dir))


@pytest.fixture(scope="session")
def bundled_export(bundled, bundled_spec, tmp_path_factory) -> tuple[Path, Manifest]:
    """fp32 ONNX export of the bundled model (parity checked on the way)."""
    return _export(bundled, bundled_spec, tmp_path_factory.mktemp("bundled-fp32"))


@pytest.fixture(scope="session")
def bundled_export_fp16(bundled, bundled_spec, tmp_path_factory) -> tuple[Path, Manifest]:
    """fp16 ONNX export of the bundled model."""
    return _export(bundled, bundled_spec, tmp_path_factory.mktemp("bundled-fp16"), fp16=True)


@pytest.fixture(scope="session")
def bundled_export_int8(bundled, bundled_spec, tmp_path_factory) -> tuple[Path, Manifest]:
    """int8 ONNX export of the bundled model (default recipe; the int8 parity gate passed on the way)."""
    return _export(bundled, bundled_spec, tmp_path_factory.mktemp("bundled-int8"), precision="int8")


@pytest.fixture(scope="session")
def vitb32(vit_b32_checkpoint):
    """(LoadedModel, SourceSpec) of ViT-B-32 with the random weights of the shared state-dict file."""
    from export.source import load_source, source_spec

    spec = source_spec("ViT-B-32", checkpoint=str(vit_b32_checkpoint))
    return load_source(spec), spec


@pytest.fixture(scope="session")
def vitb32_export(vitb32, tmp_path_factory) -> tuple[Path, Manifest]:
    """fp32 ONNX export of the random-weight ViT-B-32 state dict, made once per session.

    Its parity check is trimmed (16 shapes images, one prompt template) to keep CPU test time modest; the
    bundled model's exports run the full check.
    """
    from models.eval import EVAL_TEMPLATES

    loaded, spec = vitb32
    return _export(loaded, spec, tmp_path_factory.mktemp("vitb32-fp32"), parity_shapes=16,
                   parity_templates=EVAL_TEMPLATES[:1])


@pytest.fixture
def copy_export(tmp_path):
    """Copy an export directory to a per-test place, for tests that damage it."""

    def copy(src: Path) -> Path:
        dst = tmp_path / src.name
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("cache"))
        return dst

    return copy


@pytest.fixture(scope="session")
def siglip_export(siglip, siglip_dir, tmp_path_factory) -> tuple[Path, Manifest]:
    """fp32 ONNX export of the SigLIP-style checkpoint (tests/conftest.py), parity checked on the way."""
    from export.source import source_spec

    return _export(siglip, source_spec(str(siglip_dir)), tmp_path_factory.mktemp("siglip-fp32"))
