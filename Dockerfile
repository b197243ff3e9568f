# syntax=docker/dockerfile:1
#
# clip-serve images. Three final targets:
#
#   docker build -t clip-serve:gpu .                          # default: NVIDIA CUDA runtime base, pip install '.[gpu]'
#   docker build -t clip-serve:cpu --target cpu .             # python slim base, pip install '.[cpu]': serves ONNX
#                                                             # exports without PyTorch (the bundled model's is inside)
#   docker build -t clip-serve:cpu-full --target cpu-full .   # the cpu image plus PyTorch ('.[cpu,torch]'): the
#                                                             # torch backend, and `python -m export onnx` for exports
#
# Each target has a builder stage that creates /opt/venv with the same install step `make` uses, and a
# final stage that copies only that venv (no pip, compilers or test tooling) and runs as a non-root user.
# --build-arg EXTRAS=otel (comma-separated) installs more extras: `otel` for tracing (docker-compose.tracing.yml).
# Downloaded weights (CLIP_CACHE_DIR, HF_HOME, TORCH_HOME) and TensorRT engines live under /cache: mount a
# volume there so they survive restarts (docker-compose.yml does). docs/deploy.md explains the settings.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# CUDA 13.0 matches the CUDA build of torch that PyPI serves for torch 2.14 (cu130 wheels).
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------------------
# CPU builder: the lean set (ONNX Runtime, no PyTorch, torchvision or open_clip).
FROM ${PYTHON_IMAGE} AS cpu-build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY models ./models
COPY export ./export
COPY service ./service
ARG EXTRAS=
RUN pip install '.[cpu]' \
 && if [ -n "$EXTRAS" ]; then pip install ".[$EXTRAS]"; fi \
 && pip uninstall -y pip

# ---------------------------------------------------------------------------------------------------------
# CPU builder with PyTorch. The extra index gives the CPU-only torch wheel (+cpu); PyPI's default torch is a
# CUDA build several GB larger. Pass --build-arg PIP_EXTRA_INDEX_URL= to install exactly what PyPI serves.
FROM ${PYTHON_IMAGE} AS cpu-full-build
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY models ./models
COPY export ./export
COPY service ./service
ARG EXTRAS=
RUN pip install '.[cpu,torch]' \
 && if [ -n "$EXTRAS" ]; then pip install ".[$EXTRAS]"; fi \
 && pip uninstall -y pip
# The bundled model as an ONNX export (parity-checked against PyTorch here), for the lean image to serve offline.
RUN python -m export onnx --model models/checkpoints/shapes-rn-s --out /opt/exports/shapes-rn-s

# ---------------------------------------------------------------------------------------------------------
# GPU builder: same base as the GPU runtime so the venv's interpreter path (/usr/bin/python3) matches.
# PyPI's torch is a CUDA 13 build; for an older driver pick a CUDA 12 base and torch's matching index, e.g.
#   --build-arg CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#   --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cu128
FROM ${CUDA_IMAGE} AS gpu-build
ARG PIP_EXTRA_INDEX_URL
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY models ./models
COPY export ./export
COPY service ./service
ARG EXTRAS=
RUN pip install '.[gpu]' \
 && if [ -n "$EXTRAS" ]; then pip install ".[$EXTRAS]"; fi \
 && pip uninstall -y pip
# Fail the build rather than the first request when torch, onnxruntime-gpu and TensorRT are built for different
# CUDA majors, or when ONNX Runtime's CUDA / TensorRT provider libraries do not load. There is no GPU during a
# build, so a provider that loads but cannot start passes (export/runtime/gpu_libs.py); on a GPU host,
# `python -m export.runtime.gpu_libs --need-gpu` checks that a session really runs. --build-arg GPU_LIBS_CHECK=0
# skips it (for an onnxruntime-gpu built for another CUDA than torch, on purpose).
ARG GPU_LIBS_CHECK=1
RUN if [ "$GPU_LIBS_CHECK" != 0 ]; then python -m export.runtime.gpu_libs; fi

# ---------------------------------------------------------------------------------------------------------
# CPU runtime with PyTorch (`cpu-full`): the torch backend, and the one-off export step of docker-compose.cpu.yml.
FROM ${PYTHON_IMAGE} AS cpu-full
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/clip clip \
 && mkdir -p /cache \
 && chown clip:clip /cache
COPY --from=cpu-full-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CLIP_HOST=0.0.0.0 \
    CLIP_PORT=8000 \
    CLIP_DEVICE=cpu \
    CLIP_CACHE_DIR=/cache/weights \
    HF_HOME=/cache/huggingface \
    TORCH_HOME=/cache/torch \
    XDG_CACHE_HOME=/cache/xdg
USER clip
WORKDIR /home/clip
VOLUME ["/cache"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=15m --retries=3 \
    CMD python -c "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('CLIP_PORT', '8000'), timeout=4)"
STOPSIGNAL SIGTERM
CMD ["python", "-m", "service"]

# ---------------------------------------------------------------------------------------------------------
# CPU runtime: the lean set. It serves ONNX exports (CLIP_BACKEND=onnx, CLIP_EXPORT_DIR); without settings, the
# bundled model's export made in cpu-full-build, so `docker run clip-serve:cpu` works offline.
FROM ${PYTHON_IMAGE} AS cpu
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/clip clip \
 && mkdir -p /cache \
 && chown clip:clip /cache
COPY --from=cpu-build /opt/venv /opt/venv
COPY --from=cpu-full-build /opt/exports /opt/exports
# HF_HOME / XDG_CACHE_HOME keep every library's downloads on the /cache volume too.
ENV PATH=/opt/venv/bin:$PATH \
    CLIP_BACKEND=onnx \
    CLIP_EXPORT_DIR=/opt/exports/shapes-rn-s \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CLIP_HOST=0.0.0.0 \
    CLIP_PORT=8000 \
    CLIP_DEVICE=cpu \
    CLIP_CACHE_DIR=/cache/weights \
    HF_HOME=/cache/huggingface \
    TORCH_HOME=/cache/torch \
    XDG_CACHE_HOME=/cache/xdg
USER clip
WORKDIR /home/clip
VOLUME ["/cache"]
EXPOSE 8000
# /readyz is 503 until the model is loaded and warmed up, and while draining. The start period covers a
# first start that downloads weights.
HEALTHCHECK --interval=15s --timeout=5s --start-period=15m --retries=3 \
    CMD python -c "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('CLIP_PORT', '8000'), timeout=4)"
# SIGTERM starts a drain of CLIP_DRAIN_S (25 s): give `docker stop` a longer timeout (compose does).
STOPSIGNAL SIGTERM
CMD ["python", "-m", "service"]

# ---------------------------------------------------------------------------------------------------------
# GPU runtime (the default target: last stage).
FROM ${CUDA_IMAGE} AS gpu
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --create-home --home-dir /home/clip clip \
 && mkdir -p /cache \
 && chown clip:clip /cache
COPY --from=gpu-build /opt/venv /opt/venv
# NVIDIA_DRIVER_CAPABILITIES: compute (CUDA), utility (nvidia-smi) and video, which mounts the driver's codec
# libraries that the hardware JPEG decoder behind CLIP_JPEG_DECODE=cuda (nvJPEG) uses.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CLIP_HOST=0.0.0.0 \
    CLIP_PORT=8000 \
    CLIP_DEVICE=cuda \
    CLIP_CACHE_DIR=/cache/weights \
    HF_HOME=/cache/huggingface \
    TORCH_HOME=/cache/torch \
    XDG_CACHE_HOME=/cache/xdg \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,video
USER clip
WORKDIR /home/clip
VOLUME ["/cache"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=15m --retries=3 \
    CMD python -c "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('CLIP_PORT', '8000'), timeout=4)"
STOPSIGNAL SIGTERM
CMD ["python", "-m", "service"]
