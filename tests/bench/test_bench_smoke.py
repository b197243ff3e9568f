"""`python -m bench --quick` on the bundled model with tiny budgets: every stage runs and the JSON is complete.

The timeout leaves room for a fresh clone, where the run first makes the fp32 and int8 exports it measures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # 60-120 s on 2 cores
def test_quick_bench_writes_complete_results(tmp_path):
    out = tmp_path / "bench"
    run = subprocess.run([sys.executable, "-m", "bench", "--quick", "--seconds", "0.5", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=420)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())

    assert {"machine", "encoder", "decode", "served", "ratios", "load_average"} <= set(results)
    assert results["machine"]["cores"] >= 1 and results["machine"]["cpu"]
    cells = {(r["backend"], r["tower"]) for r in results["encoder"]}
    assert {("torch", "image"), ("onnx", "image"), ("torch", "text"), ("onnx", "text")} <= cells
    assert all(r["items_per_s"] > 0 for r in results["encoder"])

    d = results["decode"]["models"]["bundled"]
    assert d["full_items_per_s"] > 0 and d["reduced_items_per_s"] > 0 and -1 <= d["min_cosine_reduced_vs_full"] <= 1

    scenarios = results["served"]["bundled"]["scenarios"]
    for name in ("image-224", "image-1080p", "text", "classify-cold", "classify-10x80", "image-224-batch1"):
        points = scenarios[name]["points"]
        assert points and all(p["items_per_s"] > 0 and p["latency_ms"]["p50"] > 0 for p in points), name
        assert scenarios[name]["peak_rss_mib"] > 0
    # the 1,000-label set (80,000 prompts) is built only where that fits --quick's 5 s budget; else it says why
    notes = results["served"]["bundled"]["notes"]
    assert "classify-1000x80" in scenarios or notes["classify-1000x80"].startswith("not run: building 80,000"), notes

    r = results["ratios"]["bundled"]
    assert r["serving_efficiency"]["image-224"]["value"] > 0
    assert r["cached_classify_over_embed"]["classify-10x80"]["value"] > 0
    assert r["reduced_decode"]["speedup"] > 0
    assert set(r["verdicts"]) == {"serving_efficiency", "batching_gain", "cached_classify_over_embed",
                                  "reduced_decode_speedup", "reduced_decode_min_cosine"}
    assert (out / "results.md").is_file() and list(out.glob("throughput-*.png"))

    # int8 against fp32, same run: encoder rows of both precisions, then both servers measured in turn
    int8_rows = {(r["tower"], r["batch"]) for r in results["encoder"] if r["precision"] == "int8"}
    assert int8_rows == {(t, n) for t in ("image", "text") for n in (1, 8)}
    compare = results["int8"]["bundled"]["scenarios"]
    for precision in ("fp32", "int8"):
        for name in ("image-224", "text"):
            points = compare[precision][name]["points"]
            assert [p["concurrency"] for p in points] == [1, 8], (precision, name)
            assert all(p["items_per_s"] > 0 and p["latency_ms"]["p50"] > 0 and not p["errors"] for p in points)
    assert results["int8"]["bundled"]["info"]["int8"]["precision"] == "int8"
    r8 = results["ratios_int8"]["bundled"]
    assert r8["encoder_image"]["value"] > 0 and r8["p50_c1"]["value"] > 0
    assert set(r8["verdicts"].values()) == {"no target"}  # issue 14's targets are for ViT-B-32
    assert (out / "int8-bundled.png").is_file() and "## int8 vs fp32: bundled" in (out / "results.md").read_text()
