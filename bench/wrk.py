"""Cross-check the served numbers with wrk, a load generator written in C.

    python -m bench.wrk [--model bundled|vit-b-32] [--concurrency 8,32,128] [--seconds 10] [--env CLIP_X=v ...]

The suite's own generator (bench/load.py, httpx) costs 2-3 ms of CPU per request at low concurrency and up
to ~18 ms at 128 connections, on the same cores as the server. For a slow model that is noise; for the
bundled 64-px model it is the bottleneck above concurrency 8. wrk costs a few microseconds per request, so
its numbers are the server's own. Needs `wrk` on PATH (Debian: `apt-get install wrk`).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import assets, load
from bench.server import BenchServer, mean_batch

LUA = """local f = io.open("{body}", "rb"); wrk.body = f:read("*all"); f:close()
wrk.method = "POST"; wrk.headers["Content-Type"] = "{ctype}"
"""


def wrk(url: str, script: Path, concurrency: int, seconds: float) -> dict:
    """One wrk run -> requests/s, p50/p99 ms, non-2xx count (parsed from its --latency report)."""
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    res: dict = {"concurrency": concurrency, "non_2xx": 0}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            res["requests_per_s"] = float(parts[1])
        elif parts[:1] in (["50%"], ["99%"]):
            res[f"p{parts[0][:-1]}_ms"] = to_ms(parts[1])
        elif "Non-2xx" in line:
            res["non_2xx"] = int(parts[-1])
        elif "requests in" in line:
            res["requests"] = int(parts[0])
    return res


def to_ms(text: str) -> float:
    for unit, scale in (("us", 0.001), ("ms", 1.0), ("s", 1000.0), ("m", 60_000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    return float(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.wrk", description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("bundled", "vit-b-32"), default="bundled")
    ap.add_argument("--concurrency", default="8,32,128")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--env", nargs="*", default=[], help="extra CLIP_*=value settings for the server")
    args = ap.parse_args(argv)
    if not shutil.which("wrk"):
        print("wrk is not on PATH (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    model = assets.vit_b_32() if args.model == "vit-b-32" else assets.bundled()
    env = {**model.server_env("onnx"), **dict(kv.split("=", 1) for kv in args.env)}
    tmp = Path(tempfile.mkdtemp(prefix="bench-wrk-"))
    body, ctype = load.multipart([("file", assets.photo_jpegs(224, 224)[0], "photo.jpg")])
    (tmp / "body.bin").write_bytes(body)
    script = tmp / "post.lua"
    script.write_text(LUA.format(body=tmp / "body.bin", ctype=ctype))
    with BenchServer(env, tmp / "server.log") as server:
        url = server.url + "/embed/image"
        for c in (int(x) for x in args.concurrency.split(",")):
            wrk(url, script, c, min(5.0, args.seconds))  # warm-up
            before, cpu0 = server.metrics(), server.tree_cpu_seconds() or 0.0
            r = wrk(url, script, c, args.seconds)
            cpu = (server.tree_cpu_seconds() or 0.0) - cpu0  # front-ends and engines too (CLIP_WORKERS)
            server.wait_idle()
            per_item = 1000 * cpu / max(1, r.get("requests", 0))
            print(f"{args.model} image-224 wrk c={c:<4} {r.get('requests_per_s', 0):8.1f} img/s  "
                  f"p50 {r.get('p50_ms', float('nan')):8.1f} ms  p99 {r.get('p99_ms', float('nan')):8.1f} ms  "
                  f"non-2xx {r['non_2xx']}  mean batch {mean_batch(before, server.metrics())}  "
                  f"server CPU {per_item:.1f} ms/img", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
