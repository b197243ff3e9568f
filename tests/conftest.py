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
    slow_first(items)


def slow_first(items: list[pytest.Item]) -> None:
    """Files that hold a `slow` test move to the front, each file's tests staying together and in order.

    `make test` hands whole files to pytest-xdist workers in collection order (--dist loadfile
    --no-loadscope-reorder): the longest files start first instead of leaving one worker busy at the end."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: the order within each group is kept


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


# A sigmoid-loss (SigLIP-style) model's learned head. Scale above 100, so a clamp meant for CLIP would show; the
# bias is positive because this small model's random towers give shape images and label prompts cosines of about
# -0.2 to -0.1, and +22 puts those at probabilities between 0.01 and 0.9999 (trained SigLIP models, with positive
# cosines for matches, learn a negative bias).
SIGLIP_LOGIT_SCALE, SIGLIP_LOGIT_BIAS = 120.0, 22.0


@pytest.fixture(scope="session")
def siglip_dir(tmp_path_factory) -> Path:
    """A small SigLIP-style open_clip model as a local checkpoint directory: the shapes-vit-xs towers with
    `init_logit_bias` (so it carries a learned `logit_bias`, as open_clip's SigLIP configs do), open_clip's default
    (CLIP BPE) tokenizer, random (seeded) weights."""
    import json
    import math

    import open_clip

    from models.checkpoint import save_checkpoint
    from models.factory import CONFIG_DIR
    from models.preprocess import PreprocessConfig

    cfg = {**json.loads((CONFIG_DIR / "shapes-vit-xs.json").read_text()), "init_logit_bias": -10.0}
    torch.manual_seed(0)
    model = open_clip.CLIP(**cfg)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(SIGLIP_LOGIT_SCALE))
        model.logit_bias.fill_(SIGLIP_LOGIT_BIAS)
    return save_checkpoint(model, cfg, PreprocessConfig(size=(64, 64)), tmp_path_factory.mktemp("siglip") / "siglip-xs")


@pytest.fixture(scope="session")
def siglip(siglip_dir):
    from models.factory import load_model

    return load_model(str(siglip_dir))


@pytest.fixture(scope="session")
def open_clip_head():
    """open_clip's own zero-shot arithmetic for a loaded model, one prompt per label:
    head(loaded, PIL images, prompts) -> (cosines [N, C], probabilities [N, C]) as float64 numpy, the probabilities
    torch.sigmoid(image_features @ text_features.T * logit_scale.exp() + logit_bias) for a model with a logit_bias,
    the softmax over the labels of logit_scale.exp() x cosine otherwise."""
    from models.preprocess import eval_transform

    @torch.no_grad()
    def head(loaded, images, prompts):
        model = loaded.model
        pixels = torch.stack([eval_transform(loaded.preprocess)(im.convert("RGB")) for im in images])  # [N, 3, H, W]
        image_features = model.encode_image(pixels, normalize=True)  # [N, D]
        text_features = model.encode_text(loaded.tokenizer(list(prompts)), normalize=True)  # [C, D]
        cosines = image_features @ text_features.T
        if getattr(model, "logit_bias", None) is not None:
            probs = torch.sigmoid(image_features @ text_features.T * model.logit_scale.exp() + model.logit_bias)
        else:
            probs = (cosines * model.logit_scale.exp()).softmax(dim=-1)
        return cosines.double().numpy(), probs.double().numpy()

    return head
