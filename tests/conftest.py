"""Shared fixtures: the bundled model, and a ViT-B-32 with random weights saved as a local state dict."""

from __future__ import annotations

import os
from pathlib import Path

# Before torch loads OpenMP (here and in every server the tests start, which inherit the environment): idle OpenMP
# threads sleep instead of spinning. On a 2-core machine that runs other work too, spinning threads take the
# cores from the threads with work: 12 training steps took 42 s instead of 4 s with another process busy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

from export.runtime.gpu_libs import tensorrt_installed  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "models" / "checkpoints" / "shapes-rn-s"


def pytest_collection_modifyitems(config, items):
    """GPU-marked tests are skipped where CUDA is absent (CPU CI); TensorRT ones where tensorrt is absent.

    TensorRT is looked up, not imported: importing it loads its libraries into the process, which would let ONNX
    Runtime's TensorRT provider work in tests while the server (which never imports tensorrt) falls back."""
    has_cuda = torch.cuda.is_available()
    has_trt = tensorrt_installed()
    for item in items:  # markers, not keywords: keywords also hold directory names (tests/gpu)
        if item.get_closest_marker("gpu") and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if item.get_closest_marker("tensorrt") and not has_trt:
            item.add_marker(pytest.mark.skip(reason="needs TensorRT (pip install '.[gpu]')"))


@pytest.fixture(scope="session")
def bundled_dir() -> Path:
    assert (BUNDLED / "open_clip_config.json").is_file(), "bundled checkpoint missing"
    return BUNDLED


@pytest.fixture(scope="session")
def bundled(bundled_dir):
    from models.factory import load_model

    return load_model(str(bundled_dir))


@pytest.fixture(scope="session")
def vit_b32_checkpoint(tmp_path_factory) -> Path:
    """A ViT-B-32 state dict with random (seeded) weights, saved the way users save fine-tuned models."""
    from safetensors.torch import save_file

    from models.factory import create_model

    torch.manual_seed(0)
    model = create_model("ViT-B-32")
    path = tmp_path_factory.mktemp("vitb32") / "vit-b-32-random.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path
