"""The GPU image's driver capabilities and its build-time check of the GPU libraries (read as text: no Docker
engine here; tests/deploy/test_dockerfile.py has the parser)."""

from __future__ import annotations

from tests.deploy.test_dockerfile import DOCKERFILE, parse


def test_gpu_image_mounts_the_video_driver_libraries():
    """nvJPEG's hardware decoder (CLIP_JPEG_DECODE=cuda) needs the driver's `video` capability in a container."""
    _, stages = parse(DOCKERFILE.read_text())
    env = " ".join(next(s for s in stages if s.name == "gpu").args("ENV"))
    caps = env.split("NVIDIA_DRIVER_CAPABILITIES=")[1].split()[0].split(",")
    assert {"compute", "utility", "video"} <= set(caps) or caps == ["all"]


def test_gpu_build_checks_the_gpu_libraries_after_installing_them():
    """CUDA majors and ORT's provider libraries are checked when the image is built, not at the first request."""
    _, stages = parse(DOCKERFILE.read_text())
    runs = next(s for s in stages if s.name == "gpu-build").args("RUN")
    install = next(i for i, r in enumerate(runs) if "pip install '.[gpu]'" in r)
    check = next(i for i, r in enumerate(runs) if "python -m export.runtime.gpu_libs" in r)
    assert check > install
