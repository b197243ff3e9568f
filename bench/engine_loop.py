"""`python -m bench.engine_loop`: how many calls per second one engine process takes, without HTTP (issue 16).

    python -m bench.engine_loop                               # about 45 s
    python -m bench.engine_loop --seconds 1 --out /tmp/eng    # a smoke run

Starts the real split server (`CLIP_WORKERS=1`) on bench's stand-in backend (bench/standin.py: a fixed time per
batch; 224 px input, normalised on its "device" as eager PyTorch on CUDA does), reads its engine's address from the
start-up log, and sends that engine `embed` calls straight over ZeroMQ from this process: decoded uint8 images, what a
front-end sends, `--in-flight` images at a time (as many calls as that makes), for 1 and 16 images per call, each way
a front-end hands them over (`--transport`): in slots of a shared-memory ring (`ring`, service/pixel_ring.py, what
front-ends do where there is a /dev/shm) and as a frame of the message (`socket`).
Reports calls/s, images/s, and the engine process's CPU per call and per image (/proc), split by thread: its event
loop, ZeroMQ's I/O thread, the others (the encoder threads). 1000 / (the busiest thread's CPU ms per call) is the
most calls per second one engine process could take with a core for each thread, whatever the device: the ceiling
the README's GPU prediction names. The driver shares this host's cores, so calls/s here are a floor; the CPU per call
is the engine's own.
Writes engine_loop.json and engine_loop.md under --out.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import zmq
from tqdm import tqdm

from bench import machine
from bench.server import BenchServer, stat_cpu_seconds
from service.ipc import pack, raise_error, socket_dir, unpack_all
from service.pixel_ring import PixelRing

ROOT = Path(__file__).resolve().parents[1]
CALL_SIZES = (1, 16)  # images per call: a one-photo request's, and an indexer's batch
TRANSPORTS = ("ring", "socket")  # how the pixels reach the engine: shared-memory slots, or a frame of the message
LAYOUT = re.compile(r"engine\(s\) \S+ pid (\d+) at (ipc://[^;\s]+)")  # service/supervisor.py's layout line
REPLY_TIMEOUT_MS = 30_000


@dataclass(frozen=True)
class Config:
    seconds: float = 5.0  # per point
    warmup_s: float = 1.0
    in_flight: int = 64  # images outstanding at once (as bench.feed keeps in flight): calls = in_flight / per call
    image_size: int = 224
    transports: tuple[str, ...] = TRANSPORTS


def engine_of(log: str) -> tuple[int, str]:
    """(pid, ZeroMQ address) of the first engine process, from the supervisor's `process layout` line."""
    m = LAYOUT.search(log)
    if m is None:
        raise RuntimeError(f"no engine in the server's process layout line:\n{log[-2000:]}")
    return int(m.group(1)), m.group(2)


class Driver:
    """A front-end's side of the wire, and nothing else: `embed` calls of `per_call` images, `in_flight` at once."""

    def __init__(self, address: str, per_call: int, size: int, in_flight: int, transport: str = "socket"):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)
        self.pixels = np.random.default_rng(per_call).integers(0, 256, (per_call, size, size, 3), dtype=np.uint8)
        self.in_flight, self.next_id, self.outstanding = in_flight, 0, 0
        self.ring: PixelRing | None = None
        self.slots: dict[int, list[int]] = {}  # each call's slots, free again at its reply
        if transport == "ring":  # as a front-end makes its ring: in the temp dir of the engine's socket
            directory = socket_dir(address)
            megabytes = in_flight * per_call * size * size * 3 / 2 ** 20
            self.ring = PixelRing.create(directory, (size, size, 3), megabytes) if directory else None
            if self.ring is None:
                raise RuntimeError(f"no shared-memory ring in {directory} (not on /dev/shm?): use --transport socket")

    def close(self) -> None:
        if self.ring is not None:
            self.ring.close()
        self.sock.close(0)
        self.ctx.term()

    def _send(self) -> None:
        self.next_id += 1
        self.outstanding += 1
        header = {"op": "embed", "id": self.next_id, "deadline": time.monotonic() + 60}
        if self.ring is None:
            self.sock.send_multipart(pack(header, [self.pixels]))
            return
        slots = self.slots[self.next_id] = self.ring.take(list(self.pixels))  # a front-end's copy into its slots
        self.sock.send_multipart(pack({**header, "ring": self.ring.path, "slots": slots}))

    def _replies(self) -> int:
        """Read one message (one or several replies), check each is an embedding per image; how many replies."""
        if not self.sock.poll(REPLY_TIMEOUT_MS):
            raise RuntimeError(f"the engine did not answer for {REPLY_TIMEOUT_MS / 1000:g} s")
        replies = unpack_all(self.sock.recv_multipart(copy=False))
        for header, arrays in replies:
            if self.ring is not None:
                self.ring.give_back(self.slots.pop(header["id"]))
            raise_error(header)
            if arrays[0].shape[0] != len(self.pixels):
                raise RuntimeError(f"{arrays[0].shape[0]} embeddings for {len(self.pixels)} images")
        self.outstanding -= len(replies)
        return len(replies)

    def run(self, seconds: float) -> tuple[int, float]:
        """Keep `in_flight` calls going for `seconds`; (calls answered, seconds taken). Ends with none outstanding."""
        while self.outstanding < self.in_flight:
            self._send()
        done, start = 0, time.monotonic()
        end = start + seconds
        while time.monotonic() < end:
            n = self._replies()
            done += n
            for _ in range(n):
                self._send()
        taken = time.monotonic() - start
        while self.outstanding:
            self._replies()
        return done, taken


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds of a process's threads so far, by role: its event loop (the main thread), ZeroMQ's I/O thread,
    and the rest (the encoder threads, which copy each batch into the upload buffer and wait on the device)."""
    out = {"event_loop": 0.0, "zmq_io": 0.0, "other_threads": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # a thread that ended while we looked
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        role = "event_loop" if task.name == str(pid) else "zmq_io" if name.startswith("ZMQbg/IO") else "other_threads"
        out[role] += stat_cpu_seconds(stat)
    return out


def measure_point(pid: int, address: str, per_call: int, transport: str, cfg: Config) -> dict:
    driver = Driver(address, per_call, cfg.image_size, max(1, cfg.in_flight // per_call), transport)
    try:
        driver.run(cfg.warmup_s)
        before = thread_cpu_seconds(pid)
        calls, taken = driver.run(cfg.seconds)
        after = thread_cpu_seconds(pid)
    finally:
        driver.close()
    ms = {role: 1000 * (after[role] - before[role]) / max(1, calls) for role in before}  # per call
    busiest = max(ms.values())
    return {"images_per_call": per_call, "transport": transport, "calls_in_flight": driver.in_flight, "calls": calls,
            "seconds": round(taken, 3),
            "calls_per_s": round(calls / taken, 1), "images_per_s": round(calls * per_call / taken, 1),
            "engine_cpu_ms_per_call": round(sum(ms.values()), 4),
            "engine_cpu_ms_per_image": round(sum(ms.values()) / per_call, 4),
            "thread_cpu_ms_per_call": {role: round(v, 4) for role, v in ms.items()},
            # each thread has a core to itself at most: the busiest one bounds the engine
            "calls_per_s_ceiling": round(1000 / busiest) if busiest else None,
            "images_per_s_ceiling": round(1000 * per_call / busiest) if busiest else None}


def measure(cfg: Config, raw: Path) -> dict:
    env = {"CLIP_WORKERS": "1", "BENCH_STANDIN_IMAGE_SIZE": str(cfg.image_size)}
    with BenchServer(env, raw / "server-engine-loop.log", cmd=[sys.executable, "-m", "bench.standin_server"]) as server:
        pid, address = engine_of(server.log_path.read_text(errors="replace"))
        todo = [(k, t) for k in CALL_SIZES for t in cfg.transports]
        points = [measure_point(pid, address, k, t, cfg) for k, t in tqdm(todo, desc="engine loop", unit="point")]
    return {"machine": machine.describe(), "config": asdict(cfg), "points": points,
            "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def table(results: dict) -> str:
    rows = ["| images/call | pixels via | calls/s | images/s | engine CPU ms/call (event loop + ZeroMQ I/O + other "
            "threads) | engine CPU ms/image | ceiling: calls/s | ceiling: images/s |", "|---" * 8 + "|"]
    for p in results["points"]:
        t = p["thread_cpu_ms_per_call"]
        rows.append(f"| {p['images_per_call']} | {p.get('transport', 'socket')} | {p['calls_per_s']:,.0f} | "
                    f"{p['images_per_s']:,.0f} | "
                    f"{p['engine_cpu_ms_per_call']} ({t['event_loop']} + {t['zmq_io']} + {t['other_threads']}) | "
                    f"{p['engine_cpu_ms_per_image']} | {p['calls_per_s_ceiling'] or 0:,} | "
                    f"{p['images_per_s_ceiling'] or 0:,} |")
    return "\n".join(rows)


def write(results: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / "engine_loop.json", out / "engine_loop.md"
    js.write_text(json.dumps(results, indent=2) + "\n")
    md.write_text(f"# One engine process without HTTP ({results['finished']})\n\n"
                  f"Machine: {machine.summary(results['machine'])}.\n\n"
                  f"Written by `python -m bench.engine_loop` (see its docstring); raw numbers in `engine_loop.json`. "
                  f"Stand-in backend at {results['config']['image_size']} px, {results['config']['in_flight']} images "
                  f"in flight, {results['config']['seconds']:g} s per point.\n\n{table(results)}\n")
    return [js, md]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.engine_loop", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=Config.seconds, help="driving time per point")
    p.add_argument("--in-flight", type=int, default=Config.in_flight, help="images outstanding at once")
    p.add_argument("--image-size", type=int, default=Config.image_size, help="the stand-in's input side")
    p.add_argument("--transport", default=",".join(TRANSPORTS),
                   help="how the pixels reach the engine, comma-separated: ring (shared memory), socket")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks", help="where engine_loop.json/.md go")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    transports = tuple(t.strip() for t in args.transport.split(",") if t.strip())
    if not transports or set(transports) - set(TRANSPORTS):
        raise SystemExit(f"--transport: choose from {', '.join(TRANSPORTS)}")
    cfg = Config(seconds=args.seconds, warmup_s=min(Config.warmup_s, args.seconds), in_flight=args.in_flight,
                 image_size=args.image_size, transports=transports)
    results = measure(cfg, Path(tempfile.mkdtemp(prefix="bench-engine-loop-")))
    files = write(results, args.out)
    print("\n" + table(results))
    print(f"\nwrote {', '.join(str(f) for f in files)}")
    return 0 if all(p["calls"] for p in results["points"]) else 1


if __name__ == "__main__":
    sys.exit(main())
