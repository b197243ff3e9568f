"""An app from service.app.create_app served by uvicorn on a loopback port, in a thread of the test process.

For tests that need real concurrent HTTP requests against a fake backend (to isolate the batcher, say); tests of
the whole server start `python -m service` instead (tests/service/server.py)."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import httpx
import uvicorn
from fastapi import FastAPI

from tests.service.server import free_port


@contextmanager
def serve(app: FastAPI, ready_timeout_s: float = 60.0, **uvicorn_config: Any) -> Iterator[str]:
    """Serve `app` until the block ends; yields its base URL once /readyz answers 200. `uvicorn_config`: more
    uvicorn.Config arguments (the server's own protocol class as `http=`, say)."""
    with serving(app, ready_timeout_s, **uvicorn_config) as server:
        yield url_of(server)


@contextmanager
def serving(app: FastAPI, ready_timeout_s: float = 60.0, **uvicorn_config: Any) -> Iterator[uvicorn.Server]:
    """As serve(), yielding the uvicorn.Server (its server_state.connections are the open connections)."""
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning", access_log=False,
                            lifespan="on", ws="none", **uvicorn_config)
    server = uvicorn.Server(config)  # in a thread, uvicorn installs no signal handlers
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    try:
        limit = time.monotonic() + ready_timeout_s
        while not _ready(url_of(server)):
            assert thread.is_alive(), "the app's server stopped while starting"
            assert time.monotonic() < limit, f"not ready after {ready_timeout_s:g}s"
            time.sleep(0.02)
        yield server
    finally:
        server.should_exit = True
        thread.join(30)


def url_of(server: uvicorn.Server) -> str:
    return f"http://127.0.0.1:{server.config.port}"


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False
