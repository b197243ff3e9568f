"""scripts/gpu_check.sh end to end on a CPU machine: it collects the GPU tests, runs the report, and prints a line
per path ("no CUDA" here) instead of crashing. Skipped on a GPU machine, where the script runs for real."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu_check.sh"


@pytest.mark.slow  # 17-24 s on 2 cores
def test_gpu_check_script_runs_on_cpu(bundled_dir, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine run scripts/gpu_check.sh itself")
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_MODEL": str(bundled_dir)}
    out = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], env=env, capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    summary = out.stdout.split("== summary per path")[1].strip().splitlines()
    assert len([l for l in summary if " NOT RUN: " in l]) == 8, out.stdout[-3000:]
    assert "torch-CUDA fp32        NOT RUN: RuntimeError: no CUDA" in out.stdout
    tests_log = (tmp_path / "out" / "gpu_tests.log").read_text()
    assert re.search(r"\d+ skipped", tests_log) and "error" not in tests_log.lower(), tests_log[-2000:]
    # only the GPU test files are collected (nothing "deselected"): the rest of the suite imports packages GPU
    # machines lack (httpx, yaml, FastAPI, scikit-image, ...), so collecting it there fails
    assert "deselected" not in tests_log, tests_log[-500:]
    skipped_in = set(re.findall(r"^SKIPPED \[\d+\] (tests/[\w/]+)\.py", tests_log, re.MULTILINE))
    expected = {"tests/gpu/test_export_paths", "tests/gpu/test_nvjpeg", "tests/gpu/test_device_pixels"}
    assert skipped_in == expected, skipped_in
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"gpu_tests.log", "gpu_tests.xml", "gpu_check.log",
                                                             "gpu_check.json"}


def test_gpu_check_script_never_calls_a_bare_python():
    """GPU images often have python3 only."""
    code = [l for l in SCRIPT.read_text().splitlines() if not l.lstrip().startswith("#")]
    assert not [l for l in code if re.search(r"(^|[\s;(=])python(\s|$)", l)]
