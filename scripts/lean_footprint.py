"""Footprint of a server install: time from process start to /readyz 200, and peak RSS under a short load.

    python scripts/lean_footprint.py --python /tmp/venv-a/bin/python --python /tmp/venv-b/bin/python \
        --export exports/vit-b-32 [--starts 3] [--requests 48] [--cold]

Each interpreter runs `python -m service` (CLIP_BACKEND=onnx, CPU) from an empty directory, so the installed package
is what runs, not this checkout. Starts alternate between the interpreters, back to back, so load from other
processes hits them alike; the median of the starts is reported with the load average, and the CPU seconds each
server used until ready (less sensitive than wall time to other processes). A server keeps a record of the graphs it
has hashed (export/digest_record.py) in <export>/cache; --cold removes it before every start, so each one hashes
the graphs as a first start does. Issue 13's measurement (docs/benchmarks/README.md, "Lean serving").
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used: what a start costs, less sensitive than wall time to other
    processes on a shared machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14, 15 of stat


def load(url: str, requests: int) -> None:
    """`requests` each of /embed/image (a 224x224 JPEG), /embed/text and /classify, 8 at a time."""
    buf = io.BytesIO()
    Image.open(sorted((ROOT / "export" / "parity_images").glob("*.jpg"))[0]).convert("RGB").resize((224, 224)).save(
        buf, "JPEG", quality=90)
    jpeg = buf.getvalue()
    with httpx.Client(base_url=url, timeout=120) as client:
        calls = [lambda i=i: client.post("/embed/image", files=[("file", ("a.jpg", jpeg, "image/jpeg"))])
                 for i in range(requests)]
        calls += [lambda i=i: client.post("/embed/text", json={"texts": [f"a photo of thing {i}", "a cat"]})
                  for i in range(requests)]
        calls += [lambda i=i: client.post("/classify", files=[("file", ("a.jpg", jpeg, "image/jpeg"))],
                                          data={"labels": ["a cat", "a dog", f"thing {i}"]}) for i in range(requests)]
        with ThreadPoolExecutor(8) as pool:
            for r in pool.map(lambda call: call(), calls):
                r.raise_for_status()


def one_start(python: str, export: str, requests: int, workdir: str, cold: bool = False) -> dict:
    if cold:
        (Path(export) / "cache" / "verified.json").unlink(missing_ok=True)
    port = free_port()
    env = {**os.environ, "CLIP_BACKEND": "onnx", "CLIP_EXPORT_DIR": export, "CLIP_DEVICE": "cpu",
           "CLIP_HOST": "127.0.0.1", "CLIP_PORT": str(port), "CLIP_LOG_LEVEL": "warning"}
    env.pop("PYTHONPATH", None)
    t0 = time.perf_counter()
    proc = subprocess.Popen([python, "-m", "service"], cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        while True:
            assert proc.poll() is None, "the server exited while starting"
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        ready_s = time.perf_counter() - t0
        rss_ready, cpu_ready = vm_hwm_mib(proc.pid), cpu_s(proc.pid)
        load(url, requests)
        return {"ready_s": round(ready_s, 2), "cpu_s_ready": round(cpu_ready, 2),
                "peak_rss_mib_ready": round(rss_ready, 1), "peak_rss_mib": round(vm_hwm_mib(proc.pid), 1)}
    finally:
        proc.terminate()
        proc.wait(60)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", action="append", required=True, help="an install's interpreter (repeatable)")
    ap.add_argument("--export", required=True, help="ONNX export directory to serve")
    ap.add_argument("--starts", type=int, default=3)
    ap.add_argument("--requests", type=int, default=48, help="requests per endpoint in the load")
    ap.add_argument("--cold", action="store_true", help="remove the record of verified graphs before each start")
    args = ap.parse_args(argv)
    runs: dict[str, list[dict]] = {p: [] for p in args.python}
    loads = []
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(args.starts):
            for python in args.python:
                loads.append(os.getloadavg()[0])
                runs[python].append(one_start(python, str(Path(args.export).resolve()), args.requests, workdir,
                                              args.cold))
                print(python, runs[python][-1], flush=True)
    summary = {p: {"ready_s_median": statistics.median(r["ready_s"] for r in rs),
                   "cpu_s_ready_median": statistics.median(r["cpu_s_ready"] for r in rs),
                   "peak_rss_mib_median": statistics.median(r["peak_rss_mib"] for r in rs), "runs": rs}
               for p, rs in runs.items()}
    print(json.dumps({"load_average_1m": [round(x, 2) for x in loads], "results": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
