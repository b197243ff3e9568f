"""Soak test (not run in CI): start the server, send mixed load on loopback, report RSS growth.

    .venv/bin/python scripts/soak.py                 # 10 minutes, 1 minute of warm-up
    .venv/bin/python scripts/soak.py --minutes 3     # shorter

Load: image embeddings (PNG/JPEG/WebP of random sizes, some broken), text embeddings (new and repeated texts),
classification with new and repeated label lists, label sets created/used/deleted, and malformed requests.
The caches get small byte budgets so that they fill during warm-up: after that, memory must stay flat.
RSS of the server process is sampled every few seconds; the result compares the end with the end of warm-up.
Exit status 1 when the growth is 10% or more.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.service.server import free_port  # noqa: E402

WORDS = ("red green blue yellow purple orange pink cyan circle square triangle star heart cross diamond "
         "small large photo drawing of a the one two big tiny bright dark").split()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def random_image(rng: random.Random) -> bytes:
    w, h = rng.randint(16, 900), rng.randint(16, 900)
    arr = np.random.default_rng(rng.randint(0, 2**31)).integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(arr).resize((w, h))
    fmt = rng.choice(["PNG", "JPEG", "WEBP"])
    buf = io.BytesIO()
    img.save(buf, fmt)
    data = buf.getvalue()
    return data[: len(data) // 2] if rng.random() < 0.05 else data  # a few truncated files


def sentence(rng: random.Random, fresh: bool) -> str:
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8)))
    return f"{words} {rng.getrandbits(48):x}" if fresh else words


async def worker(client: httpx.AsyncClient, url: str, rng: random.Random, until: float, stats: dict) -> None:
    while time.monotonic() < until:
        kind = rng.choices(["image", "text", "classify", "labelset", "bad"], weights=[4, 3, 3, 1, 1])[0]
        try:
            if kind == "image":
                files = [("file", (f"{i}", random_image(rng))) for i in range(rng.randint(1, 4))]
                r = await client.post(url + "/embed/image", files=files)
            elif kind == "text":
                texts = [sentence(rng, fresh=rng.random() < 0.7) for _ in range(rng.randint(1, 32))]
                r = await client.post(url + "/embed/text", json={"texts": texts})
            elif kind == "classify":
                labels = list({sentence(rng, fresh=rng.random() < 0.5) for _ in range(rng.randint(2, 40))})
                data = {"labels": labels, "top_k": "3"}
                templates = rng.choice([None, "simple", ["a {}.", "a photo of a {}."]])
                if templates:
                    data["templates"] = templates
                r = await client.post(url + "/classify", files=[("file", ("x", random_image(rng)))], data=data)
            elif kind == "labelset":
                name = f"soak-{rng.randint(0, 20)}"
                op = rng.random()
                if op < 0.5:
                    labels = list({sentence(rng, fresh=True) for _ in range(rng.randint(2, 50))})
                    r = await client.put(f"{url}/labelsets/{name}", json={"labels": labels})
                elif op < 0.8:
                    r = await client.post(url + "/classify", files=[("file", ("x", random_image(rng)))],
                                          data={"labelset": name})
                else:
                    r = await client.delete(f"{url}/labelsets/{name}")
            else:
                r = await client.post(url + "/embed/image", json={"images": ["not base64!", "data:text/plain,hi"]})
            stats[r.status_code] = stats.get(r.status_code, 0) + 1
        except httpx.HTTPError as exc:
            stats[type(exc).__name__] = stats.get(type(exc).__name__, 0) + 1


async def run_load(url: str, seconds: float, concurrency: int, seed: int, stats: dict) -> None:
    until = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*(worker(client, url, random.Random(seed * 1000 + i), until, stats)
                               for i in range(concurrency)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="total load time (default 10)")
    ap.add_argument("--warmup-minutes", type=float, default=1.0, help="load before the reference RSS (default 1)")
    ap.add_argument("--concurrency", type=int, default=4, help="concurrent clients (default 4)")
    ap.add_argument("--model", default=None, help="CLIP_MODEL for the server (default: the server's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "CLIP_HOST": "127.0.0.1", "CLIP_PORT": str(port), "CLIP_LOG_LEVEL": "warning",
           "CLIP_TEXT_CACHE_MB": "4", "CLIP_LABELSET_CACHE_MB": "4", "CLIP_MAX_LABELSETS": "16"}
    if args.model:
        env["CLIP_MODEL"] = args.model
    server = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                print("server did not become ready", file=sys.stderr)
                return 2
            time.sleep(0.5)
        rss_ready = rss_mb(server.pid)
        stats: dict = {}
        samples: list[tuple[float, float]] = []
        start = time.monotonic()

        async def sample_while_loading() -> None:
            load = asyncio.ensure_future(run_load(url, args.minutes * 60, args.concurrency, args.seed, stats))
            while not load.done():
                samples.append((time.monotonic() - start, rss_mb(server.pid)))
                await asyncio.sleep(5)
            await load

        asyncio.run(sample_while_loading())
        rss_end = rss_mb(server.pid)
        warm = [rss for t, rss in samples if t >= args.warmup_minutes * 60]
        rss_warm = warm[0] if warm else samples[-1][1]
        growth = (rss_end - rss_warm) / rss_warm * 100
        metrics = httpx.get(url + "/metrics").text
        caches = {line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.splitlines()
                  if line.startswith(("clip_cache_bytes", "clip_cache_entries"))}
        result = {"minutes": args.minutes, "warmup_minutes": args.warmup_minutes, "concurrency": args.concurrency,
                  "requests": sum(v for k, v in stats.items() if isinstance(k, int)), "statuses": stats,
                  "rss_ready_mb": round(rss_ready, 1), "rss_after_warmup_mb": round(rss_warm, 1),
                  "rss_end_mb": round(rss_end, 1), "rss_peak_mb": round(max(r for _, r in samples), 1),
                  "growth_percent": round(growth, 2), "caches": caches}
        print(json.dumps(result, default=str))
        print(f"RSS after warm-up {rss_warm:.1f} MB, at the end {rss_end:.1f} MB: growth {growth:+.2f}% "
              f"({'OK' if growth < 10 else 'TOO MUCH'}, limit 10%) over {args.minutes:g} min, "
              f"{result['requests']} requests")
        return 0 if growth < 10 else 1
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    sys.exit(main())
