#!/usr/bin/env bash
# Download the cp312 wheels that scripts/gpu_check.sh needs on a GPU machine that reaches no package registry
# (Python 3.12 with CUDA torch, torchvision, numpy and Pillow already there) into the git-ignored .whl/.
#
#   scripts/gpu_wheels.sh          # open_clip_torch and its small needs, pytest: 5.5 MB
#   scripts/gpu_wheels.sh --onnx   # also onnx + onnxruntime (CPU build: exports and CPU parity, no GPU
#                                  # provider) and their needs: 42 MB in all
#
# On the GPU machine (docs/export.md, "Running the GPU check on a machine without a registry"):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site PYTHON=python3 scripts/gpu_check.sh "$OUT"
#
# One version of each package (pip --no-deps installs exactly these; two versions of one stop the install).
# huggingface_hub and timm, which open_clip_torch lists, are left out: open_clip imports them only to download
# pretrained weights or build timm towers, which the check does not do. torch brings sympy and
# typing_extensions. onnxruntime-gpu (250 MB) and TensorRT are too large to carry: without them the ORT-CUDA,
# ORT-TensorRT and TensorRT paths report NOT RUN with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
DEST=.whl

BASE=(open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 regex==2026.11.19 tqdm==4.70.1 safetensors==0.8.0
      pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 packaging==26.4 pygments==2.21.0 pytest-timeout==2.4.0)
ONNX=(onnx==1.23.2 onnxruntime==1.32.0 protobuf==7.36.2 ml_dtypes==0.7.0 flatbuffers==25.12.19)

want=("${BASE[@]}")
[ "${1:-}" = "--onnx" ] && want+=("${ONNX[@]}")

mkdir -p "$DEST"
# pip matches each manylinux tag exactly: list the ones these packages publish (N = 17, 27, 28).
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${want[@]}"
du -ch "$DEST"/*.whl | tail -1
