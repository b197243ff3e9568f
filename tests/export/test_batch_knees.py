"""A knee recorded in an export's manifest for this host is the served max batch, with no warm-up probe; one recorded
on another host is ignored (the server measures its own)."""

from __future__ import annotations

import json
import re
import time

import httpx

from export.batch_knee import KNEES_CACHE, knee, with_knees
from export.manifest import read_manifest, write_manifest
from service.batch_probe import sizes_up_to
from tests.service.fake_backend import png
from tests.service.server import ServerProcess

# made-up curves with unmistakable knees: image 2 (4 adds 3%), text 1 (flat)
CURVES = {"image": {1: 10.0, 2: 30.0, 4: 31.0}, "text": {1: 5.0, 2: 5.1}}


def _serve_batching(root, tmp_path) -> dict:
    env = {"CLIP_BACKEND": "onnx", "CLIP_DEVICE": "cpu", "CLIP_EXPORT_DIR": str(root)}
    with ServerProcess(env, tmp_path / "server.log") as server:
        return httpx.get(server.url + "/info", timeout=30).json()["batching"]


def test_a_knee_recorded_for_this_host_is_the_served_max_batch(bundled_export, copy_export, tmp_path):
    root = copy_export(bundled_export[0])
    write_manifest(with_knees(read_manifest(root), "cpu", CURVES), root)
    batching = _serve_batching(root, tmp_path)
    assert (batching["image_max_batch"], batching["text_max_batch"]) == (2, 1)
    assert {m: c["source"] for m, c in batching["measured"].items()} == {"image": "manifest", "text": "manifest"}


def test_a_knee_recorded_on_another_host_is_ignored(bundled_export, copy_export, tmp_path):
    root = copy_export(bundled_export[0])
    manifest = with_knees(read_manifest(root), "cpu", CURVES)
    manifest.batch_knees["cpu"]["host"] = "some other CPU x128"
    write_manifest(manifest, root)
    batching = _serve_batching(root, tmp_path)
    assert {m: c["source"] for m, c in batching["measured"].items()} == {"image": "warm-up", "text": "warm-up"}


def test_a_complete_warm_up_probe_is_remembered_and_a_restart_skips_it(bundled_export, copy_export, tmp_path):
    """The probe delays readiness; its knees are kept in the export's cache for this host, and the next start uses
    them. (CLIP_BATCH_PROBE_S generous, so the tiny bundled export's probe completes even on a busy machine.)"""
    root = copy_export(bundled_export[0])
    env = {"CLIP_BACKEND": "onnx", "CLIP_DEVICE": "cpu", "CLIP_EXPORT_DIR": str(root), "CLIP_BATCH_PROBE_S": "120"}
    with ServerProcess(env, tmp_path / "first.log") as server:
        first = httpx.get(server.url + "/info", timeout=30).json()["batching"]
    assert {m: c["source"] for m, c in first["measured"].items()} == {"image": "warm-up", "text": "warm-up"}
    assert all(c["complete"] for c in first["measured"].values()), first
    with ServerProcess(env, tmp_path / "second.log") as server:
        second = httpx.get(server.url + "/info", timeout=30).json()["batching"]
    assert {m: c["source"] for m, c in second["measured"].items()} == {"image": "cache", "text": "cache"}
    assert (second["image_max_batch"], second["text_max_batch"]) == (first["image_max_batch"],
                                                                       first["text_max_batch"])


def test_a_probe_cut_short_is_finished_after_ready_while_requests_are_served(bundled_export, copy_export, tmp_path):
    """A budget that measures batch 1 alone leaves each curve still rising: the server is ready at max batch 1 and
    measures the larger sizes while it is idle between requests, then serves at the whole curve's knee and remembers
    it, complete, for this host. The requests served meanwhile all succeed. One process, also under `make
    test-split`: a split server's engine is ready (and starts finishing its probe) before its front-end, and it could
    finish before the first request arrived (seen once); the next test covers the split."""
    root = copy_export(bundled_export[0])
    env = {"CLIP_BACKEND": "onnx", "CLIP_DEVICE": "cpu", "CLIP_EXPORT_DIR": str(root), "CLIP_BATCH_PROBE_S": "0.001",
           "CLIP_WORKERS": "0"}
    statuses: list[int] = []
    with ServerProcess(env, tmp_path / "server.log") as server:
        deadline, batching = time.monotonic() + 300, None
        while batching is None or not all(c["complete"] for c in batching["measured"].values()):
            assert time.monotonic() < deadline, batching
            i = len(statuses)
            statuses.append(httpx.post(server.url + "/embed/text", json={"texts": [f"a photo of {i} cats"]},
                                       timeout=60).status_code)
            statuses.append(httpx.post(server.url + "/embed/image", files=[("file", ("a.png", png((i, 0, 0))))],
                                       timeout=60).status_code)
            batching = httpx.get(server.url + "/info", timeout=30).json()["batching"]
            time.sleep(0.05)  # the pace of the requests (idle time between them), not a wait for the probe
    log = (tmp_path / "server.log").read_text()  # all of it (server.log() is its tail)
    for modality in ("image", "text"):  # the start-up probe was cut short after batch 1
        assert re.search(rf"{modality} encoder items/s by batch size: 1: [0-9.]+ \(stopped by CLIP_BATCH_PROBE_S",
                         log), log
    # requests came while the probe was being finished (its 13 sizes wait >= 50 ms each for the engine to settle)
    during = log[log.index("ready in"):log.rindex("finished while idle after ready")]
    assert '"path": "/embed/' in during, log
    assert statuses and set(statuses) == {200}
    record = json.loads((root / KNEES_CACHE).read_text())["cpu"]
    for modality, limit in (("image", 32), ("text", 64)):
        curve = batching["measured"][modality]
        assert curve["complete"] and curve["source"] == "warm-up+idle", batching
        rates = {int(n): r for n, r in curve["items_per_s"].items()}
        assert list(rates) == sizes_up_to(limit)
        assert batching[f"{modality}_max_batch"] == curve["max_batch"] == knee(rates)
        assert record[modality] == knee(rates) and modality not in record.get("partial", {}), record
        assert re.search(rf"{modality} encoder items/s by batch size: .* \(finished while idle after ready\) -> max "
                         rf"batch {knee(rates)}, was 1\b", log), log


def test_a_split_servers_engine_finishes_a_probe_cut_short(bundled_export, copy_export, tmp_path):
    """CLIP_WORKERS=2: the engine process finishes its probe after ready as one process does, and remembers the
    knees complete; every front-end's /info then shows the finished curves and the new caps."""
    root = copy_export(bundled_export[0])
    env = {"CLIP_BACKEND": "onnx", "CLIP_DEVICE": "cpu", "CLIP_EXPORT_DIR": str(root), "CLIP_BATCH_PROBE_S": "0.001",
           "CLIP_WORKERS": "2", "CLIP_PREPROCESS_WORKERS": "2"}

    def remembered() -> dict:
        path = root / KNEES_CACHE
        return json.loads(path.read_text())["cpu"] if path.exists() else {"partial": {"image": 0.001}}

    statuses: list[int] = []
    with ServerProcess(env, tmp_path / "server.log") as server:
        deadline = time.monotonic() + 300
        while True:  # at least one request: on an idle machine the probe may finish before the first one
            statuses.append(httpx.post(server.url + "/embed/image", files=[("file", ("a.png", png((0, 0, 9))))],
                                       timeout=60).status_code)
            if not remembered().get("partial") and {"image", "text"} <= set(remembered()):
                break
            assert time.monotonic() < deadline, remembered()
            time.sleep(0.05)  # the pace of the requests (idle time between them), not a wait for the probe
        knees = remembered()
        for _ in range(8):  # connections spread over both front-ends: each shows what the engine serves
            while True:  # the next heartbeat (0.25 s) brings the engine's new state
                batching = httpx.get(server.url + "/info", timeout=30).json()["batching"]
                if all(batching["measured"][m]["complete"] for m in ("image", "text")):
                    break
                assert time.monotonic() < deadline, batching
                time.sleep(0.05)
            assert (batching["image_max_batch"], batching["text_max_batch"]) == (knees["image"], knees["text"])
            assert {m: c["source"] for m, c in batching["measured"].items()} == {"image": "warm-up+idle",
                                                                                 "text": "warm-up+idle"}
    log = (tmp_path / "server.log").read_text()
    assert statuses and set(statuses) == {200}
    for modality in ("image", "text"):
        found = re.search(rf"{modality} encoder items/s by batch size: .* \(finished while idle after ready\) -> max "
                          rf"batch (\d+), was 1\b", log)
        assert found and remembered()[modality] == int(found.group(1)), log
