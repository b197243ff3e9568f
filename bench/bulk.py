"""`clip-serve embed` against the benchmark's load generator: one server, the same request size, back to back.

    python -m bench.bulk                                  # bundled model, 3,000 images, 16 per request, 4 in flight
    python -m bench.bulk --images 6000 --rounds 2 --batch-size 32 --concurrency 8

Each round runs, against the same server (default settings, the bundled model):
  1. bench/load.py: closed-loop, `concurrency` workers, each POSTs a prebuilt multipart body of `batch-size`
     224x224 JPEG photos (the files the bulk run reads) for `seconds` after its warm-up;
  2. `clip-serve embed FOLDER --out DIR --batch-size B --concurrency C --quiet`, in this process (the command's
     own code path, minus interpreter start-up), over `images` files written once to a temporary folder:
     items/s from its first request to its last committed row (reading files, parsing answers, writing parquet).
and prints bulk / load, and each client's CPU time per image. The target (issue 17) is >= 0.9. Both clients run
on the server's machine, so the CPU each spends is taken from the server: the ratio says what the bulk command
costs over a minimal client that sends prebuilt bodies and never reads the answers.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from bench import load, machine
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


def load_point(url: str, blobs: list[bytes], batch: int, concurrency: int, seconds: float) -> tuple[float, float]:
    """(items/s, client CPU ms per item) of the load generator sending `batch` images per request."""
    bodies = [load.multipart([("file", blobs[(k * batch + j) % len(blobs)], f"{j}.jpg") for j in range(batch)])
              for k in range(16)]

    def make(n: int) -> load.Request:
        body, ctype = bodies[n % len(bodies)]
        return load.Request("/embed/image", body, ctype, items=batch)

    point = load.run(url, make, concurrency, seconds, warmup_s=30)
    if point.errors:
        print(f"  load generator errors: {point.errors}", file=sys.stderr)
    return point.items_per_s, 1000 * point.client_cpu_s / max(1, point.total_items)


def bulk_point(url: str, folder: Path, out: Path, batch: int, concurrency: int) -> tuple[float, float]:
    """(items/s, client CPU ms per item) of `clip-serve embed` over the whole folder, into a fresh output."""
    args = command.parser().parse_args([str(folder), "--server", url, "--out", str(out), "--batch-size", str(batch),
                                        "--concurrency", str(concurrency), "--quiet"])
    items = command.collect_items(args)
    cpu0 = time.process_time()
    summary = asyncio.run(command.embed(args, items))
    cpu = time.process_time() - cpu0
    if summary.embedded != len(items):
        raise RuntimeError(f"clip-serve embed wrote {summary.embedded} of {len(items)} images")
    return summary.embedded / summary.seconds, 1000 * cpu / summary.embedded


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bulk", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=3000, help="files the bulk run embeds")
    p.add_argument("--batch-size", type=int, default=16, help="images per request, both clients")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight, both clients")
    p.add_argument("--seconds", type=float, default=10.0, help="load generator measurement window")
    p.add_argument("--rounds", type=int, default=1, help="load, bulk pairs to run back to back")
    p.add_argument("--model", default=None, help="CLIP_MODEL (default: the bundled model)")
    args = p.parse_args(argv)

    print("machine:", machine.summary(machine.describe()))
    env = {"CLIP_MODEL": args.model} if args.model else {}
    with tempfile.TemporaryDirectory(prefix="bench-bulk-") as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        blobs = write_images(folder, args.images)
        ratios = []
        with BenchServer(env, Path(tmp) / "server.log") as server:
            for r in range(args.rounds):
                gen, gen_cpu = load_point(server.url, blobs, args.batch_size, args.concurrency, args.seconds)
                server.wait_idle()
                bulk, bulk_cpu = bulk_point(server.url, folder, Path(tmp) / f"out-{r}.parquet", args.batch_size,
                                            args.concurrency)
                ratios.append(bulk / gen)
                print(f"round {r + 1}: load generator {gen:.1f} img/s ({gen_cpu:.2f} ms CPU/img), clip-serve embed "
                      f"{bulk:.1f} img/s ({bulk_cpu:.2f} ms CPU/img), ratio {bulk / gen:.3f} (batch "
                      f"{args.batch_size}, concurrency {args.concurrency}, load average "
                      f"{machine.load_average()[0]:.2f})")
    print(f"bulk / load generator: {' '.join(f'{x:.3f}' for x in ratios)} (target >= 0.9)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
