"""A knee recorded in an export's manifest for this host is the served max batch, with no warm-up probe; one recorded
on another host is ignored (the server measures its own)."""

from __future__ import annotations

import httpx

from export.batch_knee import with_knees
from export.manifest import read_manifest, write_manifest
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
