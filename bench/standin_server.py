"""`python -m bench.standin_server`: the real server (`python -m service`, every setting, the same uvicorn set-up,
drain and exit) with the stand-in backend of bench/standin.py instead of a model. Bench only.

    BENCH_STANDIN_BATCH_MS=2 BENCH_STANDIN_ITEM_MS=0.02 CLIP_PORT=8001 .venv/bin/python -m bench.standin_server

BENCH_SERVICE_ROOT=DIR serves the `service` package of another checkout of this repository (a git worktree of an
older commit: `python -m bench.feed --baseline-ref`) with this checkout's stand-in.
"""

from __future__ import annotations

import hashlib
import os
import runpy
import sys
import tempfile


def packages_folder(root: str, under: str | None = None) -> str:
    """Where packages_of(root) keeps its links."""
    digest = hashlib.sha256(os.path.abspath(root).encode()).hexdigest()[:12]
    return os.path.join(under or tempfile.gettempdir(), f"bench-service-root-{digest}")


def packages_of(root: str, under: str | None = None) -> str:
    """A folder that holds the top-level packages of checkout `root` (links to them), all but `bench`: on sys.path
    ahead of this checkout it serves their `service`, `models` and `export` with our stand-in, in this process and in
    the processes it spawns (which import `bench.standin` afresh). One folder per checkout, reused."""
    root, folder = os.path.abspath(root), packages_folder(root, under)
    os.makedirs(folder, exist_ok=True)
    for entry in os.listdir(root):
        if entry != "bench" and os.path.isfile(os.path.join(root, entry, "__init__.py")):
            try:
                os.symlink(os.path.join(root, entry), os.path.join(folder, entry))
            except FileExistsError:  # made by an earlier run, or by a server started beside this one
                pass
    return folder


def main() -> None:
    root = os.environ.get("BENCH_SERVICE_ROOT")
    if root:  # before anything imports service or models: theirs come from that checkout
        sys.path.insert(0, packages_of(root))
    import service.app
    import service.backends

    from bench.standin import load_standin

    # `python -m service` runs unchanged (settings, uvicorn, drain, exit path); only what loads the model is ours.
    # A server that takes its factory from service.backends.load_backend when main() runs (issue 16's, which hands
    # it to its engine processes: load_standin pickles by reference) gets it there; one that builds its app with
    # create_app(settings) and create_app's default factory (eaf58eb and before) gets it through create_app
    service.backends.load_backend = load_standin
    create_app = service.app.create_app

    def with_standin(settings=None, backend_factory=None, **kw):
        return create_app(settings, backend_factory=load_standin, **kw)

    service.app.create_app = with_standin
    runpy.run_module("service", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
