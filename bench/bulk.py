"""`clip-serve embed` against the benchmark's load generator: one server, the same request size, back to back.

    python -m bench.bulk                                  # bundled model, 3,000 images, 16 per request, 4 in flight
    python -m bench.bulk --images 6000 --rounds 2 --batch-size 32 --concurrency 8

Each round runs, against the same server (default settings, the bundled model):
  1. bench/load.py: closed-loop, `concurrency` workers, each POSTs a prebuilt multipart body of `batch-size`
     224x224 JPEG photos (the files the bulk run reads) for `seconds` after its warm-up;
  2. `clip-serve embed FOLDER --out DIR --batch-size B --concurrency C --quiet`, in this process (the command's
     own code path, minus interpreter start-up), over `images` files written once to a temporary folder:
     items/s from its first request to its last committed row (reading files, parsing answers, writing parquet).
(the second round runs them in the other order), and prints bulk / load with each client's and the server's CPU
time per image and the cores other processes kept busy. The target (issue 17) is >= 0.9. Both clients run on the
server's machine, so the CPU each spends is taken from the server: the ratio says what the bulk command costs
over a minimal client that sends prebuilt bodies and never reads the answers. On a shared machine items/s swing
with the neighbours' load; CPU per image is the steadier figure.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from bench import load, machine
from bench.machine import OtherLoad, own_cpu_seconds
from bench.assets import photo_jpegs
from bench.server import BenchServer
from service.bulk import command


def write_images(folder: Path, n: int) -> list[bytes]:
    """n JPEG files (the benchmark's 224x224 photos, cycled); returns their bytes in file order."""
    blobs = photo_jpegs(224, 224)
    out = []
    for i in range(n):
        data = blobs[i % len(blobs)]
        (folder / f"{i:06d}.jpg").write_bytes(data)
        out.append(data)
    return out


def load_point(url: str, blobs: list[bytes], batch: int, concurrency: int,
               seconds: float) -> tuple[float, float, int]:
    """(items/s, client CPU ms per item, items) of the load generator sending `batch` images per request."""
    bodies = [load.multipart([("file", blobs[(k * batch + j) % len(blobs)], f"{j}.jpg") for j in range(batch)])
              for k in range(16)]

    def make(n: int) -> load.Request:
        body, ctype = bodies[n % len(bodies)]
        return load.Request("/embed/image", body, ctype, items=batch)

    point = load.run(url, make, concurrency, seconds, warmup_s=30)
    if point.errors:
        print(f"  load generator errors: {point.errors}", file=sys.stderr)
    return point.items_per_s, 1000 * point.client_cpu_s / max(1, point.total_items), point.total_items


def bulk_point(url: str, folder: Path, out: Path, batch: int, concurrency: int) -> tuple[float, float, int]:
    """(items/s, client CPU ms per item, items) of `clip-serve embed` over the whole folder, into a fresh output."""
    args = command.parser().parse_args([str(folder), "--server", url, "--out", str(out), "--batch-size", str(batch),
                                        "--concurrency", str(concurrency), "--quiet"])
    items = command.collect_items(args)
    cpu0 = time.process_time()
    summary = asyncio.run(command.embed(args, items))
    cpu = time.process_time() - cpu0
    if summary.embedded != len(items):
        raise RuntimeError(f"clip-serve embed wrote {summary.embedded} of {len(items)} images")
    return summary.embedded / summary.seconds, 1000 * cpu / summary.embedded, summary.embedded


def measure(server: BenchServer, kind: str, run) -> dict:
    """One point: items/s and client CPU from `run()`, with the server's CPU per image and the cores other
    processes kept busy meanwhile (how quiet the machine was)."""
    cpu0 = server.tree_cpu_seconds()
    with OtherLoad(lambda: (server.tree_cpu_seconds() or 0.0) + own_cpu_seconds()) as other:
        rate, client_ms, items = run()
    cpu1 = server.tree_cpu_seconds()
    server.wait_idle()
    server_ms = 1000 * (cpu1 - cpu0) / items if cpu0 is not None and cpu1 is not None else float("nan")
    return {"kind": kind, "img_s": rate, "client_ms": client_ms, "server_ms": server_ms, "other_cores": other.cores}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bulk", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=3000, help="files the bulk run embeds")
    p.add_argument("--batch-size", type=int, default=16, help="images per request, both clients")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight, both clients")
    p.add_argument("--seconds", type=float, default=10.0, help="load generator measurement window")
    p.add_argument("--rounds", type=int, default=1,
                   help="pairs to run; odd rounds run the load generator first, even ones the bulk command (ABBA)")
    p.add_argument("--model", default=None, help="CLIP_MODEL (default: the bundled model)")
    args = p.parse_args(argv)

    print("machine:", machine.summary(machine.describe()))
    env = {"CLIP_MODEL": args.model} if args.model else {}
    b, c = args.batch_size, args.concurrency
    ratios = []
    with tempfile.TemporaryDirectory(prefix="bench-bulk-") as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        blobs = write_images(folder, args.images)
        with BenchServer(env, Path(tmp) / "server.log") as server:
            for r in range(args.rounds):
                gen = lambda: load_point(server.url, blobs, b, c, args.seconds)  # noqa: E731
                bulk = lambda: bulk_point(server.url, folder, Path(tmp) / f"out-{r}.parquet", b, c)  # noqa: E731
                order = [("load generator", gen), ("clip-serve embed", bulk)]
                points = {kind: measure(server, kind, run) for kind, run in (order if r % 2 == 0 else order[::-1])}
                for pt in points.values():
                    print(f"round {r + 1}: {pt['kind']:<16} {pt['img_s']:7.1f} img/s, client CPU "
                          f"{pt['client_ms']:.2f} ms/img, server CPU {pt['server_ms']:.2f} ms/img, other processes "
                          f"{pt['other_cores']} cores")
                ratios.append(points["clip-serve embed"]["img_s"] / points["load generator"]["img_s"])
                print(f"round {r + 1}: ratio {ratios[-1]:.3f} (batch {b}, concurrency {c})")
    print(f"clip-serve embed / load generator: {' '.join(f'{x:.3f}' for x in ratios)}, mean "
          f"{sum(ratios) / len(ratios):.3f} (target >= 0.9)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
