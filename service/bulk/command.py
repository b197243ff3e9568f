"""`clip-serve embed`: embed a collection through running servers into a resumable parquet or .npy output.

    clip-serve embed photos/ --server http://127.0.0.1:8000 --out vectors.parquet
    clip-serve embed 'shots/**/*.jpg' urls.csv --column url --out vectors.npy
    clip-serve embed --texts captions.txt --out captions.parquet

Rerunning the same command skips what the output already holds; see service/bulk/sinks.py for the files.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Optional

import httpx

from service.bulk.runner import BulkRun, Options, Summary
from service.bulk.sinks import ErrorLog, OutputError, errors_path, open_sink
from service.bulk.sources import IMAGE_SUFFIXES, Item, SourceError, image_items, text_items
from service.client import DEFAULT_URL, AsyncClient, ClipServeError, FingerprintMismatch

INTERRUPTED = 130  # the shell's code for a run stopped by Ctrl-C


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = Options()
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="folders (walked recursively for .jpg .jpeg .png .webp .gif .bmp .tif .tiff), globs, image "
                        "files, http(s) URLs, or .txt/.csv lists of paths (relative to the list) and URLs")
    p.add_argument("--texts", metavar="FILE", help="embed texts instead: the lines of FILE, or a column of a .csv")
    p.add_argument("--column", help="the .csv column to read (default: the first)")
    p.add_argument("--server", action="append", metavar="URL",
                   help=f"server base URL (default {DEFAULT_URL}); repeat it, or separate URLs with commas, to spread "
                        f"the load and fail over between servers of the same model")
    p.add_argument("--out", required=True, type=Path,
                   help="output: a directory of parquet parts (vectors.parquet), or vectors.npy with --format npy")
    p.add_argument("--format", choices=("parquet", "npy"), help="default: npy when --out ends in .npy, else parquet")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="items per request (default %(default)s)")
    p.add_argument("--concurrency", type=int, default=d.concurrency, help="requests in flight (default %(default)s)")
    p.add_argument("--group-size", type=int, default=d.group_size,
                   help="rows per committed group: a crash loses fewer than this (default %(default)s)")
    p.add_argument("--fetch", choices=("client", "server"), default=d.fetch,
                   help="who downloads URLs: this command (default), or the server (needs CLIP_ALLOW_URLS there)")
    p.add_argument("--api-key", default=os.environ.get("CLIP_API_KEY"), help="bearer key (default: $CLIP_API_KEY)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--crash-after-groups", type=int, help=argparse.SUPPRESS)  # tests: a deterministic crash


def _servers(args: argparse.Namespace) -> list[str]:
    urls = [u.strip() for arg in (args.server or [DEFAULT_URL]) for u in arg.split(",") if u.strip()]
    return [u.rstrip("/") for u in urls]


def collect_items(args: argparse.Namespace) -> list[Item]:
    """What the arguments name, each distinct source once; SourceError when they name nothing."""
    if args.texts and args.paths:
        raise SourceError("give image PATHs or --texts FILE, not both (embed each into its own --out)")
    if args.texts:
        items = text_items(args.texts, args.column)
    elif args.paths:
        items = image_items(args.paths, args.column)
    else:
        raise SourceError("nothing to embed: give folders, globs, files or lists of images, or --texts FILE")
    if not items:
        raise SourceError(f"{' '.join(args.paths) or args.texts}: nothing to embed there (image files are found by "
                          f"their suffix: {', '.join(sorted(IMAGE_SUFFIXES))})")
    return items


def _progress(total: int, quiet: bool, unit: str):
    """A tqdm bar on stderr: items done, items/s and the time left."""
    if quiet:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc="embed", dynamic_ncols=True, smoothing=0.1)


async def embed(args: argparse.Namespace, items: list[Item]) -> Summary:
    """One run: open the output, skip what it holds, embed the rest."""
    fmt = args.format or ("npy" if args.out.suffix.lower() == ".npy" else "parquet")
    sink = open_sink(args.out, fmt)
    todo = [it for it in items if it.source not in sink.done]
    print(f"{args.out}: {len(items)} items, {len(items) - len(todo)} already done, {len(todo)} to embed",
          file=sys.stderr)
    errors = ErrorLog(errors_path(args.out))
    opts = Options(args.batch_size, args.concurrency, args.group_size, args.fetch, args.crash_after_groups)
    limits = httpx.Limits(max_connections=max(2 * args.concurrency, 10),
                          max_keepalive_connections=max(2 * args.concurrency, 10))
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)  # like Ctrl-C: write, then stop
    progress = _progress(len(todo), args.quiet, "text" if args.texts else "img")
    try:
        async with AsyncClient(_servers(args), api_key=args.api_key, timeout=120.0, max_retries=10,
                               limits=limits) as client:
            return await BulkRun(client, sink, errors, opts, progress).run(items, todo)
    finally:
        if progress is not None:
            progress.close()
        errors.close()
        sink.close()


def _report(args: argparse.Namespace, s: Summary) -> None:
    rate = s.embedded / s.seconds if s.seconds else 0.0
    line = (f"{args.out}: {s.embedded} embedded in {s.seconds:.1f}s ({rate:.1f}/s), {s.skipped} already done, "
            f"model {s.model} fingerprint {s.fingerprint}")
    if s.failed:
        line += f"; {s.failed} failed, listed in {errors_path(args.out)} (a rerun tries them again)"
    print(line, file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """The `embed` subcommand; returns the exit status."""
    for flag in ("batch_size", "concurrency", "group_size"):
        if getattr(args, flag) < 1:
            print(f"clip-serve embed: --{flag.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    try:
        items = collect_items(args)
    except (SourceError, OSError) as exc:
        print(f"clip-serve embed: {exc}", file=sys.stderr)
        return 2
    resume = "rerun the same command to resume"
    try:
        _report(args, asyncio.run(embed(args, items)))
        return 0
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"\nclip-serve embed: interrupted; what was computed is written to {args.out}: {resume}",
              file=sys.stderr)
        return INTERRUPTED
    except FingerprintMismatch as exc:
        print(f"clip-serve embed: stopped: {exc}\n{args.out} holds only fingerprint {exc.expected}.", file=sys.stderr)
        return 1
    except OutputError as exc:
        print(f"clip-serve embed: {exc}", file=sys.stderr)
        return 1
    except ImportError as exc:
        print(f"clip-serve embed: {exc}; parquet output needs pyarrow: pip install 'clip-serve[bulk]' "
              f"(or use --format npy)", file=sys.stderr)
        return 1
    except ClipServeError as exc:
        print(f"clip-serve embed: the server answered {exc}; stopped, {resume}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"clip-serve embed: cannot reach {', '.join(_servers(args))} ({type(exc).__name__}: {exc}); stopped, "
              f"{resume}", file=sys.stderr)
        return 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clip-serve embed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    return run(parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
