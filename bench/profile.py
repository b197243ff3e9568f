"""Profile the served path: py-spy samples the server while a closed-loop load point runs.

    python -m bench.profile [--model vit-b-32] [--scenario image-224] [--concurrency 32] [--seconds 15]
                            [--env CLIP_PREPROCESS_WORKERS=1 ...] [--native]

Writes the collapsed stacks (raw py-spy output) and a summary under docs/benchmarks/raw/, and prints the
summary: the share of samples per stage of the request path (encoder, preprocessing, JSON, multipart, ...)
and the functions with the most samples at the top of the stack. py-spy sees Python threads; with --native
it also resolves C frames (ONNX Runtime, Pillow) inside them.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from bench import assets, load, served
from bench.server import BenchServer

ROOT = Path(__file__).resolve().parents[1]

# stage -> substrings of frames. A sample goes to the stage of the frame nearest the top of its stack that
# matches, so "JSON inside a route inside the event loop" counts as JSON, not as event loop.
STAGES = [
    ("waiting (idle thread)", ("Condition.wait", "Queue.get (queue.py", "thread.py:81)", "Runner.run (asyncio/runners")),
    ("encoder (inference thread)", ("Session.run", "_encode_timed", "encode_image", "encode_text")),
    ("image decode (preprocess pool)", ("ImageFile.load", "open_image", "draft_for", "exif_transpose", "to_rgb")),
    ("image transform (preprocess pool)", ("resize (", "to_tensor", "normalize", "Image.copy", "_preprocess_one",
                                           "ImagePreprocessor", "center_crop")),
    ("tokenize", ("_tokenize", "tokenizer")),
    ("response JSON (event loop)", ("serialize_response", "jsonable_encoder", "render (", "tolist", "dumps",
                                    "serialize_json")),
    ("multipart / body parsing (event loop)", ("multipart", "form (", "read_multipart", "read_json", "body (")),
    ("thread hand-off (futures, executor)", ("_chain_future", "ThreadPoolExecutor.submit", "Condition.notify",
                                             "run_in_executor", "call_soon_threadsafe")),
    ("batcher / asyncio (event loop)", ("batcher.py", "until_done_or_gone", "is_disconnected", "asyncio")),
    ("HTTP / ASGI (event loop)", ("uvicorn", "starlette", "fastapi", "httptools", "h11", "middleware")),
]


def stage_of(stack: str) -> str:
    for frame in reversed(stack.split(";")):
        for name, markers in STAGES:
            if any(m in frame for m in markers):
                return name
    return "other"


def summarise(collapsed: str, top: int = 15) -> str:
    """py-spy raw (collapsed) stacks -> share per stage and the top self frames."""
    per_stage: collections.Counter = collections.Counter()
    leaves: collections.Counter = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        per_stage[stage_of(stack)] += n
        leaves[stack.split(";")[-1]] += n
    if not total:
        return "no samples (is py-spy allowed to attach? try as root or with CAP_SYS_PTRACE)"
    lines = [f"{total} samples of Python threads (py-spy, 100 Hz)", "", "| stage | share of samples |", "|---|---|"]
    lines += [f"| {name} | {100 * n / total:.1f}% |" for name, n in per_stage.most_common()]
    lines += ["", "| top-of-stack frame | share |", "|---|---|"]
    lines += [f"| `{frame[:110]}` | {100 * n / total:.1f}% |" for frame, n in leaves.most_common(top)]
    return "\n".join(lines)


def record(pid: int, seconds: float, path: Path, native: bool) -> subprocess.Popen:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    cmd = [exe, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "100", "-f", "raw", "-o", str(path)]
    # --native needs the process paused for each sample; without it, sampling does not stop the server (a
    # paused server on 2 cores ran at a quarter of its speed, which skews every share)
    cmd.append("--native" if native else "--nonblocking")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("vit-b-32", "bundled"), default="vit-b-32")
    p.add_argument("--scenario", choices=("image-224", "image-1080p", "text", "classify-10x80", "classify-1000x80"),
                   default="image-224")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--backend", default="onnx")
    p.add_argument("--env", action="append", default=[], help="extra CLIP_*=value for the server")
    p.add_argument("--native", action="store_true", help="resolve C frames too (slower sampling)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "raw")
    args = p.parse_args(argv)

    model = assets.vit_b_32() if args.model == "vit-b-32" else assets.bundled()
    env = {**model.server_env(args.backend), **dict(e.split("=", 1) for e in args.env)}
    small = assets.photo_jpegs(224, 224)
    make = {"image-224": lambda: served.image_request(small),
            "image-1080p": lambda: served.image_request(assets.photo_jpegs(1920, 1080)),
            "text": lambda: served.text_request("profile"),
            "classify-10x80": lambda: served.classify_cached_request(small, "bench10"),
            "classify-1000x80": lambda: served.classify_cached_request(small, "bench1000")}[args.scenario]()
    tag = f"{args.model}-{args.scenario}-c{args.concurrency}" + "".join(f"-{e}" for e in args.env)
    args.out.mkdir(parents=True, exist_ok=True)
    raw = args.out / f"profile-{tag}.txt"
    with BenchServer(env, args.out / f"server-profile-{tag}.log") as server:
        if args.scenario.startswith("classify-"):
            n = int(args.scenario.split("-")[1].split("x")[0])
            served.put_labelset(server.url, f"bench{n}", n)
        load.run(server.url, make, args.concurrency, 3.0, warmup_s=30)  # reach steady state first
        server.wait_idle()
        spy = record(server.proc.pid, args.seconds, raw, args.native)
        result: list = []
        t = threading.Thread(target=lambda: result.append(
            load.run(server.url, make, args.concurrency, args.seconds, warmup_s=0.5)))
        t.start()
        t.join()
        _, err = spy.communicate(timeout=120)
        if spy.returncode:
            print(f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')[-800:]}", file=sys.stderr)
    summary = summarise(raw.read_text() if raw.exists() else "")
    head = f"# profile: {tag}\n\nload during profiling: {result[0].line() if result else '?'}\n\n"
    (args.out / f"profile-{tag}.md").write_text(head + summary + "\n")
    print(head + summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
