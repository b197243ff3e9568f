"""`python -m bench.standin_server`: the real server (`python -m service`, every setting, the same uvicorn set-up,
drain and exit) with the stand-in backend of bench/standin.py instead of a model. Bench only.

    BENCH_STANDIN_BATCH_MS=2 BENCH_STANDIN_ITEM_MS=0.02 CLIP_PORT=8001 .venv/bin/python -m bench.standin_server

BENCH_SERVICE_ROOT=DIR serves the `service` package of another checkout of this repository (a git worktree of an
older commit: `python -m bench.feed --baseline-ref`) with this checkout's stand-in.
"""

from __future__ import annotations

import os
import runpy
import sys


def main() -> None:
    root = os.environ.get("BENCH_SERVICE_ROOT")
    if root:  # before anything imports service or models: theirs come from that checkout
        sys.path.insert(0, os.path.abspath(root))
    import service.app

    from bench.standin import load_standin

    create_app = service.app.create_app

    def with_standin(settings=None, backend_factory=None):
        return create_app(settings, backend_factory=load_standin)

    # `python -m service` builds its app with service.app.create_app(settings), looked up when it starts: the one
    # injection point every version of the server has (create_app's backend_factory), so this runs the server's
    # own entry point unchanged, including its exit path
    service.app.create_app = with_standin
    runpy.run_module("service", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
