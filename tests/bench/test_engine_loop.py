"""`python -m bench.engine_loop` (one engine process driven without HTTP) with a tiny budget: it drives a real split
server's engine over ZeroMQ, every call comes back as one embedding per image, and its numbers agree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.engine_loop import engine_of

ROOT = Path(__file__).resolve().parents[2]


def test_engine_of_reads_the_supervisors_layout_line():
    line = ("INFO service.supervisor process layout: supervisor pid 1; 2 front-end(s) on 127.0.0.1:8000, pids [3, 4]; "
            "engine(s) cuda:0 pid 16919 at ipc:///tmp/clip-serve-x/engine-0.sock; metrics in /tmp/clip-serve-x/metrics")
    assert engine_of(line) == (16919, "ipc:///tmp/clip-serve-x/engine-0.sock")
    with pytest.raises(RuntimeError, match="process layout"):
        engine_of("INFO service configuration: {}")


def test_engine_loop_drives_a_split_servers_engine_and_counts_its_cpu(tmp_path):
    run = subprocess.run([sys.executable, "-m", "bench.engine_loop", "--seconds", "1", "--in-flight", "8",
                          "--image-size", "32", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    results = json.loads((tmp_path / "engine_loop.json").read_text())
    points = {(p["images_per_call"], p["transport"]): p for p in results["points"]}
    assert set(points) == {(1, "ring"), (1, "socket"), (16, "ring"), (16, "socket")}  # the engine read both ways
    for (k, _), p in points.items():
        assert p["calls"] > 0 and p["images_per_s"] == pytest.approx(p["calls_per_s"] * k, rel=0.01)
        assert p["engine_cpu_ms_per_call"] > 0
        assert p["engine_cpu_ms_per_image"] == pytest.approx(p["engine_cpu_ms_per_call"] / k, rel=0.01)
        threads = p["thread_cpu_ms_per_call"]
        assert threads["event_loop"] > 0 and sum(threads.values()) == pytest.approx(p["engine_cpu_ms_per_call"],
                                                                                    abs=1e-3)
        assert p["calls_per_s_ceiling"] == pytest.approx(1000 / max(threads.values()), rel=0.01)
    assert "| 16 | ring |" in (tmp_path / "engine_loop.md").read_text()
