#!/usr/bin/env bash
# GPU check: every GPU-marked test, then a short GPU benchmark, in under 8 minutes on one GPU.
# Prints, for torch-CUDA / ORT-CUDA / ORT-TensorRT / TensorRT, whether each ran and its numbers, or why not.
#
#   scripts/gpu_check.sh [OUT_DIR]   (default $TMPDIR/clip-serve-gpu-check; runs $PYTHON or .venv/bin/python)
#   GPU_CHECK_MODEL=models/checkpoints/shapes-rn-s scripts/gpu_check.sh   # quick smoke run (also on CPU)
#
# Budgets (seconds): tests 210, benchmark 240 -> at most 7.5 minutes plus start-up.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python
OUT="${1:-${TMPDIR:-/tmp}/clip-serve-gpu-check}"
mkdir -p "$OUT"
TEST_BUDGET=210
BENCH_BUDGET=240

echo "== environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -3
"$PY" - <<'PY'
import torch
print(f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}")
try:
    import onnxruntime as o; print(f"onnxruntime {o.__version__}: {o.get_available_providers()}")
except ImportError as e: print(f"onnxruntime: not installed ({e})")
try:
    import tensorrt as t; print(f"tensorrt {t.__version__}")
except ImportError as e: print(f"tensorrt: not installed ({e})")
PY

echo "== GPU-marked tests (budget ${TEST_BUDGET}s)"
timeout "$TEST_BUDGET" "$PY" -m pytest tests -m "gpu or tensorrt" -q -rA -p no:cacheprovider \
    --junitxml="$OUT/gpu_tests.xml" 2>&1 | tee "$OUT/gpu_tests.log" | tail -40
TEST_RC=${PIPESTATUS[0]}
[ "$TEST_RC" = 124 ] && echo "GPU tests: TIMED OUT after ${TEST_BUDGET}s"
echo "GPU tests exit status: $TEST_RC"

MODEL="${GPU_CHECK_MODEL:-ViT-B-32}"
echo "== GPU benchmark: $MODEL (ViT-B-32 gets random weights; budget ${BENCH_BUDGET}s)"
timeout "$BENCH_BUDGET" "$PY" -m export.gpu_check --model "$MODEL" --json "$OUT/gpu_check.json" \
    --work "$OUT/work" 2>&1 | grep -v -E "^\s*$|it/s\]|tower/s\]|cell/s\]" | tee "$OUT/gpu_check.log"
BENCH_RC=${PIPESTATUS[0]}
[ "$BENCH_RC" = 124 ] && echo "GPU benchmark: TIMED OUT after ${BENCH_BUDGET}s"
rm -rf "$OUT/work"

echo "== summary per path"
for path in torch-CUDA ORT-CUDA ORT-TensorRT TensorRT; do
    for precision in fp32 fp16; do
        line=$(grep -E "^${path} ${precision} " "$OUT/gpu_check.log" | head -1)
        echo "${line:-${path} ${precision}: NOT REACHED (benchmark stopped: exit ${BENCH_RC})}"
    done
done
exit 0
