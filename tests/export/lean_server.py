"""A lean (onnx) server for tests: `python -m service` run through runpy in a child process that, when it exits
(SIGTERM, after the requests), writes the heavy modules it had loaded to a file. Used by
tests/export/test_lean_serving.py and by the ViT-B-32 test in tests/export/test_onnx_export.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx

from bench.server import BenchServer

HEAVY = ("torch", "torchvision", "open_clip")
# `python -m service` ends with os._exit (no atexit): the probe writes its report just before that
PROBE = """
import json, os, runpy, sys
out, exit_now = sys.argv[1], os._exit
def report_then_exit(code):
    with open(out, "w") as f:
        json.dump(sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r}), f)
    exit_now(code)
os._exit = report_then_exit
sys.argv = ["service"]
runpy.run_module("service", run_name="__main__", alter_sys=True)
"""
ROOT = Path(__file__).resolve().parents[2]
PHOTOS = sorted((ROOT / "export" / "parity_images").glob("*.jpg"))


def serve_and_probe(export_dir: Path, tmp_path: Path) -> tuple[list[str], dict]:
    """Start an onnx server on `export_dir`, send one request of each kind, stop it; (heavy modules, answers)."""
    report = tmp_path / "modules.json"
    cmd = [sys.executable, "-c", PROBE.format(heavy=set(HEAVY)), str(report)]
    env = {"CLIP_BACKEND": "onnx", "CLIP_EXPORT_DIR": str(export_dir), "CLIP_DEVICE": "auto", "CLIP_THREADS": "2",
           "CLIP_REDUCED_JPEG_DECODE": "false"}  # full-size decoding, as open_clip's own path decodes
    server = BenchServer(env, tmp_path / "server.log", cmd=cmd)
    try:
        server.wait_ready(180)
        photo = PHOTOS[0].read_bytes()
        with httpx.Client(base_url=server.url, timeout=60) as client:
            answers = {
                "image": client.post("/embed/image", files=[("file", ("a.jpg", photo, "image/jpeg"))]),
                "text": client.post("/embed/text", json={"texts": ["a photo of a cat", "Ünïcödé façade ☕"]}),
                "classify": client.post("/classify", files=[("file", ("a.jpg", photo, "image/jpeg"))],
                                        data={"labels": ["a cat", "a rocket"]}),
            }
    finally:
        assert server.stop() == 0, (tmp_path / "server.log").read_text()[-3000:]
    for name, r in answers.items():
        assert r.status_code == 200, (name, r.text)
    return json.loads(report.read_text()), {k: r.json() for k, r in answers.items()}
