"""`python -m bench.feed`: how many images/s the serving stack can feed a fast accelerator (issue 16).

    python -m bench.feed                                  # this checkout, one process: about a minute
    python -m bench.feed --workers 1,2 --baseline-ref eaf58eb --seconds 10
    python -m bench.feed --seconds 1 --out /tmp/feed      # a smoke run

Reports, in one run:
- decode_limit: images/s of decoding + resizing + cropping to uint8 the same 224x224 JPEG in-process, one process
  per core (bench/decode.py): the most any server on this host could hand a device;
- served images/s through the stand-in backend (bench/standin.py: a fixed time per batch, GIL released) with wrk
  (a C load generator, so the client sets no ceiling), for one-image and 16-image POST /embed/image requests;
- the server's CPU milliseconds per image (process tree, from /proc): the stand-in's wait is no CPU, so this is
  all the work outside the encoder.
`--workers N[,M]` runs the server with CLIP_WORKERS=N (front-end processes, issue 16); `--baseline-ref REF`
measures a git worktree of REF (its `service` package, this checkout's stand-in) in the same run, the servers up
side by side and every point taken on each in turn. Writes feed.json, feed.md and feed.png (--name) under --out.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
from tqdm import tqdm

from bench import assets, decode, load, machine, report
from bench.server import BenchServer, mean_batch, metric
from bench.standin import StandInBackend, StandInTiming
from bench.standin_server import packages_folder
from bench.wrk import LUA, wrk

ROOT = Path(__file__).resolve().parents[1]
REQUEST_SIZES = (1, 16)  # images per request: what a single-photo client sends, and what an indexer sends


@dataclass(frozen=True)
class Config:
    seconds: float = 10.0  # wrk time per point, split over the rounds
    rounds: int = 2  # every point is taken this many times, servers in turn: a burst of other load hits all alike
    warmup_s: int = 2  # wrk run before each window, not counted (whole seconds, as wrk takes them)
    decode_s: float = 3.0  # per process, for decode_limit
    in_flight: int = 64  # images in flight per point: connections = in_flight / images per request
    timing: StandInTiming = StandInTiming()
    image_size: int | None = None  # the stand-in's input side (default: the bundled model's 64 px; ViT-B/32: 224)
    normalise: str = "device"  # where a split server's engine normalises pixels (bench/standin.py)

    def server_env(self) -> dict[str, str]:
        env = {"BENCH_STANDIN_BATCH_MS": str(self.timing.batch_ms), "BENCH_STANDIN_ITEM_MS": str(self.timing.item_ms),
               "BENCH_STANDIN_NORMALISE": self.normalise}
        return env | ({"BENCH_STANDIN_IMAGE_SIZE": str(self.image_size)} if self.image_size else {})

    def connections(self, per_request: int) -> int:
        return max(1, self.in_flight // per_request)

    @property
    def window_s(self) -> int:
        return max(1, round(self.seconds / self.rounds))  # wrk takes whole seconds


@dataclass(frozen=True)
class Target:
    """One server configuration to measure."""

    label: str  # "baseline eaf58eb", "this, 1 worker", ...
    env: dict  # extra environment (CLIP_WORKERS, BENCH_SERVICE_ROOT)
    commit: str | None


def commit_of(root: Path, ref: str = "HEAD") -> str | None:
    out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", ref], capture_output=True, text=True)
    return out.stdout.strip() or None


@contextmanager
def baseline_tree(ref: str) -> Iterator[Path]:
    """A detached git worktree of `ref` in a temporary folder, removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-feed-baseline-"))
    tree = tmp / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), ref], check=True,
                   capture_output=True, text=True)
    try:
        yield tree
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(packages_folder(str(tree)), ignore_errors=True)  # bench/standin_server.py's links to it


def targets(workers: list[int | None], baseline: Path | None, ref: str | None) -> list[Target]:
    out = []
    if baseline is not None:
        out.append(Target(f"baseline {ref}", {"BENCH_SERVICE_ROOT": str(baseline)}, commit_of(baseline)))
    for n in workers:
        label = "this checkout" + (f", CLIP_WORKERS={n}" if n is not None else "")
        out.append(Target(label, {"CLIP_WORKERS": str(n)} if n is not None else {}, commit_of(ROOT)))
    return out


def wrk_script(folder: Path, jpeg: bytes, per_request: int) -> Path:
    """A wrk Lua script that POSTs `per_request` copies of the JPEG to /embed/image as multipart."""
    body, ctype = load.multipart([("file", jpeg, f"photo{i}.jpg") for i in range(per_request)])
    (folder / f"body-{per_request}.bin").write_bytes(body)
    script = folder / f"post-{per_request}.lua"
    script.write_text(LUA.format(body=folder / f"body-{per_request}.bin", ctype=ctype))
    return script


def measure_window(server: BenchServer, script: Path, per_request: int, cfg: Config) -> dict:
    """One wrk window after a warm-up: requests, images, latency, the server's CPU and what its encoder saw."""
    url, c, window = server.url + "/embed/image", cfg.connections(per_request), cfg.window_s
    wrk(url, script, c, cfg.warmup_s)
    server.wait_idle()
    before, cpu0 = server.metrics(), server.tree_cpu_seconds()
    with machine.OtherLoad(lambda: server.tree_cpu_seconds() or 0.0) as other:
        r = wrk(url, script, c, window)
        cpu1 = server.tree_cpu_seconds()
    server.wait_idle()
    after = server.metrics()
    encoded = metric(after, "clip_batch_size_sum", modality="image") - \
        metric(before, "clip_batch_size_sum", modality="image")
    requests, rate = r.get("requests", 0), r.get("requests_per_s", 0.0)
    return {"window_s": requests / rate if rate else window, "requests": requests, "images": requests * per_request,
            "images_encoded": int(encoded),  # by the server in the window: requests x images, plus those cut off
            "server_cpu_s": None if None in (cpu0, cpu1) else cpu1 - cpu0, "p50_ms": r.get("p50_ms"),
            "p99_ms": r.get("p99_ms"), "non_2xx": r["non_2xx"], "mean_batch": mean_batch(before, after),
            "other_processes_cores": other.cores}


def pool(windows: list[dict], per_request: int, connections: int) -> dict:
    """One point from its rounds: images/s and CPU per image over all windows, latency the median round's."""
    images, seconds = sum(w["images"] for w in windows), sum(w["window_s"] for w in windows)
    cpu = None if any(w["server_cpu_s"] is None for w in windows) else sum(w["server_cpu_s"] for w in windows)
    return {"images_per_request": per_request, "connections": connections,
            "requests": sum(w["requests"] for w in windows), "images": images,
            "images_encoded": sum(w["images_encoded"] for w in windows), "images_per_s": images / seconds,
            "server_cpu_ms_per_image": round(1000 * cpu / images, 3) if images and cpu is not None else None,
            "p50_ms": round(statistics.median(w["p50_ms"] or 0.0 for w in windows), 1),
            "p99_ms": round(statistics.median(w["p99_ms"] or 0.0 for w in windows), 1),
            "non_2xx": sum(w["non_2xx"] for w in windows),
            "mean_batch": round(statistics.median(w["mean_batch"] or 0.0 for w in windows), 1),
            "other_processes_cores": max(w["other_processes_cores"] or 0.0 for w in windows), "rounds": windows}


def measure(cfg: Config, workers: list[int | None], baseline_ref: str | None, raw: Path) -> dict:
    jpeg = assets.photo_jpegs(224, 224)[0]
    pre = StandInBackend(cfg.timing, cfg.image_size).preprocess
    results: dict = {"machine": machine.describe(), "config": {
        "seconds": cfg.seconds, "rounds": cfg.rounds, "warmup_s": cfg.warmup_s, "in_flight": cfg.in_flight,
        "standin_batch_ms": cfg.timing.batch_ms, "standin_item_ms": cfg.timing.item_ms,
        "image": "224x224 JPEG q90 (a real photo, bench/assets.py)", "model_input": list(pre.size),
        "standin_normalise": cfg.normalise},
        "load_average": {"decode_limit": machine.load_average()}}
    print("machine:", machine.summary(results["machine"]))
    results["decode_limit"] = decode.decode_limit(jpeg, pre, cfg.decode_s)
    print(f"decode_limit: {results['decode_limit']['images_per_s']:.0f} images/s on "
          f"{results['decode_limit']['processes']} processes")
    raw.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        tree = stack.enter_context(baseline_tree(baseline_ref)) if baseline_ref else None
        todo = targets(workers, tree, baseline_ref)
        servers = {t.label: stack.enter_context(BenchServer({**cfg.server_env(), **t.env}, raw / f"server-feed-{i}.log",
                                                            cmd=[sys.executable, "-m", "bench.standin_server"]))
                   for i, t in enumerate(todo)}
        results["servers"] = {t.label: {"commit": t.commit, "env": t.env,
                                        "info": httpx.get(servers[t.label].url + "/info", timeout=30).json()}
                              for t in todo}
        results["load_average"]["served"] = machine.load_average()
        results["points"] = serve_points(servers, jpeg, cfg)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return results


def serve_points(servers: dict[str, BenchServer], jpeg: bytes, cfg: Config) -> list[dict]:
    """Each request size on every server in turn, `rounds` times, so the comparison is taken back to back."""
    folder = Path(tempfile.mkdtemp(prefix="bench-feed-"))
    scripts = {k: wrk_script(folder, jpeg, k) for k in REQUEST_SIZES}
    windows: dict = {(k, label): [] for k in REQUEST_SIZES for label in servers}
    try:
        steps = [(k, label) for k in REQUEST_SIZES for _ in range(cfg.rounds) for label in servers]
        for k, label in tqdm(steps, desc="feed", unit="window"):
            w = measure_window(servers[label], scripts[k], k, cfg)
            windows[(k, label)].append(w)
            tqdm.write(f"  {label:<32} {k:>2} img/request  {w['images'] / w['window_s']:8.1f} img/s  p50 "
                       f"{w['p50_ms']} ms  mean batch {w['mean_batch']}  non-2xx {w['non_2xx']}  other processes "
                       f"{w['other_processes_cores']} cores")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return [{"server": label, **pool(ws, k, cfg.connections(k))} for (k, label), ws in windows.items()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.feed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=Config.seconds, help="wrk time per point, over all rounds")
    p.add_argument("--rounds", type=int, default=Config.rounds, help="windows per point, servers taking turns")
    p.add_argument("--workers", default=None,
                   help="CLIP_WORKERS values to measure, comma-separated (default: leave it unset)")
    p.add_argument("--baseline-ref", default=None, help="also measure a git worktree of this ref (e.g. eaf58eb)")
    p.add_argument("--in-flight", type=int, default=Config.in_flight,
                   help="images in flight per point (connections = this / images per request)")
    p.add_argument("--batch-ms", type=float, default=StandInTiming.batch_ms, help="stand-in time per encoder call")
    p.add_argument("--item-ms", type=float, default=StandInTiming.item_ms, help="stand-in time per item")
    p.add_argument("--image-size", type=int, default=None,
                   help="the stand-in's input side in px (default: the bundled model's; 224 for a ViT-B/32's)")
    p.add_argument("--normalise", choices=("device", "cpu"), default=Config.normalise,
                   help="where a split server's engine normalises pixels: on the stand-in's device, as eager PyTorch "
                        "on CUDA does (default), or on the CPU, as ONNX Runtime and TensorRT engines do")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks", help="where NAME.json/.md/.png go")
    p.add_argument("--name", default="feed", help="file name of the results (default feed)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not shutil.which("wrk"):
        print("wrk is not on PATH (`make system-deps`, or Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    workers = [int(n) for n in args.workers.split(",")] if args.workers else [None]
    cfg = Config(seconds=args.seconds, rounds=args.rounds, warmup_s=max(1, min(Config.warmup_s, round(args.seconds))),
                 decode_s=min(3.0, args.seconds),
                 in_flight=args.in_flight, timing=StandInTiming(args.batch_ms, args.item_ms),
                 image_size=args.image_size, normalise=args.normalise)
    results = measure(cfg, workers, args.baseline_ref, args.out / "raw")
    files = report.write_feed(results, args.out, args.name)
    print("\n" + report.feed_table(results))
    print(f"\nwrote {', '.join(str(f) for f in files)}")
    return 1 if any(p["non_2xx"] or not p["requests"] for p in results["points"]) else 0


if __name__ == "__main__":
    sys.exit(main())
