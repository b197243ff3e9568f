"""The real server measures its max batch at warm-up where the setting is left unset, says so in /info and the log,
and keeps an explicit CLIP_*_MAX_BATCH. The backend is bench's stand-in (bench/standin.py), whose timing the test
sets: 5 ms per item and nothing per call, so batching gains nothing and the knee sits far below the default."""

from __future__ import annotations

import re
import sys

import httpx

from bench.server import BenchServer


def test_server_reports_the_measured_cap_and_keeps_an_explicit_one(tmp_path):
    env = {"BENCH_STANDIN_BATCH_MS": "0", "BENCH_STANDIN_ITEM_MS": "5", "CLIP_IMAGE_MAX_BATCH": "5",
           "CLIP_BATCH_PROBE_S": "3"}
    with BenchServer(env, tmp_path / "server.log", cmd=[sys.executable, "-m", "bench.standin_server"]) as server:
        batching = httpx.get(server.url + "/info", timeout=30).json()["batching"]
        log = server.log()
    assert batching["image_max_batch"] == 5 and "image" not in batching["measured"]  # set explicitly: not probed
    text = batching["measured"]["text"]
    assert batching["text_max_batch"] == text["max_batch"] < 64  # the default (64) gave way to the measurement
    rates = {int(n): r for n, r in text["items_per_s"].items()}
    assert rates and 1 in rates and all(r > 0 for r in rates.values())
    assert re.search(rf"text encoder items/s by batch size: .* -> max batch {text['max_batch']}\b", log), log
