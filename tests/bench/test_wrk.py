"""`python -m bench.wrk`: the C load generator against the real server gives a sane report."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.wrk import to_ms

ROOT = Path(__file__).resolve().parents[2]


def test_wrk_durations_are_read_in_ms():
    assert to_ms("350.50us") == pytest.approx(0.3505)
    assert to_ms("12.5ms") == 12.5 and to_ms("1.20s") == 1200.0 and to_ms("2m") == 120_000.0


@pytest.mark.skipif(not shutil.which("wrk"), reason="wrk is not installed (make test installs it as root)")
@pytest.mark.slow  # 12-16 s
def test_wrk_cross_check_runs_against_the_real_server():
    run = subprocess.run([sys.executable, "-m", "bench.wrk", "--concurrency", "4", "--seconds", "2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    m = re.search(r"c=4\s+([\d.]+) img/s .* non-2xx (\d+)", run.stdout)
    assert m, run.stdout
    assert float(m.group(1)) > 0 and m.group(2) == "0"
