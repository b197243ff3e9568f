#!/usr/bin/env bash
# GPU check: the GPU tests (tests/gpu), then a short GPU benchmark, in under 8 minutes on one GPU.
# Prints, for torch-CUDA / ORT-CUDA / ORT-TensorRT / TensorRT, whether each ran and its numbers, or why not.
#
#   scripts/gpu_check.sh [OUT_DIR]   (default $TMPDIR/clip-serve-gpu-check)
#   PYTHON=python3 scripts/gpu_check.sh ...                               # another interpreter
#   GPU_CHECK_MODEL=models/checkpoints/shapes-rn-s scripts/gpu_check.sh   # quick smoke run (also on CPU)
#
# Needs only torch, torchvision, numpy, Pillow, pytest and open_clip_torch (its small needs: ftfy, regex,
# wcwidth, tqdm, safetensors); onnx + onnxruntime(-gpu) and tensorrt add the ONNX/TensorRT paths, which are
# reported as NOT RUN, with the reason, without them. scripts/gpu_wheels.sh downloads those wheels for a
# machine without a package registry (docs/export.md, "Running the GPU check").
# Results, also left in OUT_DIR: gpu_tests.log, gpu_tests.xml, gpu_check.log, gpu_check.json.
# Budgets (seconds): tests 240, benchmark 240 -> at most 8 minutes plus start-up.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3   # not `python`: many GPU images have only python3
fi
OUT="${1:-${TMPDIR:-/tmp}/clip-serve-gpu-check}"
mkdir -p "$OUT"
WORK=$(mktemp -d)   # exports and the random ViT-B-32 checkpoint (600 MB): scratch, not results
trap 'rm -rf "$WORK"' EXIT
TEST_BUDGET=240
BENCH_BUDGET=240
GPU_TESTS=(tests/gpu/test_export_paths.py tests/gpu/test_nvjpeg.py tests/gpu/test_device_pixels.py)

echo "== environment ($PY)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -3
"$PY" - <<'PY'
import importlib.metadata as md, sys
import torch
print(f"python {sys.version.split()[0]}; torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"cuda available: {torch.cuda.is_available()}")
for name in ("torchvision", "open_clip_torch", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt"):
    try: print(f"{name} {md.version(name)}")  # looked up, not imported (tensorrt's import loads its libraries)
    except md.PackageNotFoundError: print(f"{name}: not installed")
PY
"$PY" -m export.runtime.gpu_libs --allow-cpu-build 2>&1 | tail -8

echo "== GPU tests: ${GPU_TESTS[*]} (budget ${TEST_BUDGET}s)"
timeout "$TEST_BUDGET" "$PY" -m pytest "${GPU_TESTS[@]}" -q -rA -p no:cacheprovider \
    --junitxml="$OUT/gpu_tests.xml" 2>&1 | tee "$OUT/gpu_tests.log" | tail -40
TEST_RC=${PIPESTATUS[0]}
[ "$TEST_RC" = 124 ] && echo "GPU tests: TIMED OUT after ${TEST_BUDGET}s"
echo "GPU tests exit status: $TEST_RC (0 passed, 1 some failed, 5 none collected)"

MODEL="${GPU_CHECK_MODEL:-ViT-B-32}"
echo "== GPU benchmark: $MODEL (ViT-B-32 gets random weights; budget ${BENCH_BUDGET}s)"
timeout "$BENCH_BUDGET" "$PY" -m export.gpu_check --model "$MODEL" --json "$OUT/gpu_check.json" \
    --work "$WORK" 2>&1 | grep -v -E "^\s*$|it/s\]|tower/s\]|cell/s\]" | tee "$OUT/gpu_check.log"
BENCH_RC=${PIPESTATUS[0]}
[ "$BENCH_RC" = 124 ] && echo "GPU benchmark: TIMED OUT after ${BENCH_BUDGET}s"

echo "== summary per path"
for path in torch-CUDA ORT-CUDA ORT-TensorRT TensorRT; do
    for precision in fp32 fp16; do
        line=$(grep -E "^${path} ${precision} " "$OUT/gpu_check.log" | head -1)
        echo "${line:-${path} ${precision}: NOT REACHED (benchmark stopped: exit ${BENCH_RC})}"
    done
done
echo "GPU tests: $(grep -E '^[0-9]+ (passed|failed|skipped)|^=+ .*(passed|failed|skipped)' "$OUT/gpu_tests.log" | tail -1)"
exit 0
