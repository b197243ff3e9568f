"""`python -m service`: validate settings, log them, serve with uvicorn, drain on SIGTERM and exit within
CLIP_DRAIN_S + EXIT_MARGIN_S, exit non-zero if the model cannot be loaded."""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import socket
import sys
import threading
from typing import Callable, Optional

import uvicorn
from pydantic import ValidationError

from service.connections import ConnectionLimits, close_all, protocol_class

log = logging.getLogger("service")


def configure_logging(level: str) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for name in ("service", "models", "export"):  # ours at the chosen level; libraries (open_clip) quieter
        logging.getLogger(name).setLevel(level.upper())


def load_settings():
    from pydantic_settings import SettingsError

    from service.settings import Settings

    try:
        return Settings()
    except SettingsError as exc:  # an environment value that could not even be parsed
        print(f"invalid configuration: {exc}", file=sys.stderr)
        sys.exit(2)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = "CLIP_" + str(err["loc"][0]).upper() if err.get("loc") else "settings"
            lines.append(f"  {name}: {err['msg']} (got {err.get('input')!r})")
        print("invalid configuration:\n" + "\n".join(lines), file=sys.stderr)
        sys.exit(2)


# After the drain, responses being written get this long before every connection still open is closed.
CLOSE_AFTER_DRAIN_S = 1.0
# The process is gone this long after CLIP_DRAIN_S at the latest, whatever clients or threads do; the
# Kubernetes grace period is derived from it (deploy/k8s/deployment.yaml, docs/deploy.md). The usual path
# takes CLOSE_AFTER_DRAIN_S + 0.5 s + the app's shutdown; the rest of the margin is for what hangs.
EXIT_MARGIN_S = 10.0


class DrainingServer(uvicorn.Server):
    """On the first SIGTERM/SIGINT: stop admitting (503), finish in-flight requests within drain_s, close the
    connections still open, exit. Exits within drain_s + EXIT_MARGIN_S in any case."""

    def __init__(self, config: uvicorn.Config, lifecycle, drain_s: float):
        super().__init__(config)
        self.lifecycle, self.drain_s = lifecycle, drain_s
        self.exit_code = 0
        self._draining = False

    def handle_exit(self, sig: int, frame) -> None:
        if self._draining:  # a second signal: stop now (uvicorn re-raises it on the way out)
            return super().handle_exit(sig, frame)
        self._draining = True
        self._exit_anyway_after(self.drain_s + EXIT_MARGIN_S)
        if self.lifecycle.engine is None:  # still loading: nothing to drain, exit 0 at once
            self.lifecycle.begin_drain()
            self.should_exit = True
            return
        self.lifecycle.begin_drain()
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain_then_exit()))

    async def _drain_then_exit(self) -> None:
        done = await self.lifecycle.drained(self.drain_s)
        log.info("drain %s; exiting", "complete" if done else f"timed out after {self.drain_s}s")
        self.should_exit = True

    async def shutdown(self, sockets: Optional[list[socket.socket]] = None) -> None:
        # uvicorn closes idle connections, waits timeout_graceful_shutdown for the busy ones, then cancels
        # their tasks, and a cancelled task that has not answered yet is sent a 500. Those requests already had
        # the drain to finish: close their connections first, so their clients see the connection end instead.
        loop = asyncio.get_running_loop()
        closing = loop.call_later(CLOSE_AFTER_DRAIN_S, self._close_connections)
        try:
            await super().shutdown(sockets)
        finally:
            closing.cancel()

    def _close_connections(self) -> None:
        closed = close_all(self.server_state.connections)
        if closed:
            log.info("closed %d connection(s) still open after the drain", closed)

    @staticmethod
    def _exit_anyway_after(seconds: float) -> None:
        """A last resort for what no timeout here reaches (a shutdown step that never returns, an event loop
        held by a long call): end the process `seconds` from now."""

        def exit_now() -> None:
            log.warning("shutdown still not finished %.0fs after the signal; exiting now", seconds)
            logging.shutdown()
            os._exit(0)

        timer = threading.Timer(seconds, exit_now)
        timer.daemon = True
        timer.start()

    def fail(self, exc: BaseException) -> None:
        self.exit_code = 1
        self.should_exit = True


def main(backend_factory: Optional[Callable] = None) -> int:
    """`backend_factory`: what loads the model (service.backends.load_backend unless a test holds it back); with
    CLIP_WORKERS >= 1 it runs in the engine processes, so it must be picklable (a module-level name)."""
    settings = load_settings()
    configure_logging(settings.log_level)
    from service.backends import load_backend

    factory = backend_factory or load_backend
    if settings.workers:  # front-end processes + one engine process per device (service/supervisor.py)
        from service.supervisor import run_supervisor

        return run_supervisor(settings, factory)
    from service.app import create_app
    from service.tracing import TracingUnavailable

    try:
        app = create_app(settings, backend_factory=factory)
    except TracingUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return serve(settings, app)


def serve(settings, app, sockets: Optional[list[socket.socket]] = None) -> int:
    """Run `app` with uvicorn until SIGTERM/SIGINT (drained) or a load failure; the exit status. `sockets`: a
    listening socket inherited from the supervisor, instead of binding CLIP_HOST:CLIP_PORT."""
    limits = ConnectionLimits(settings.header_timeout_s, settings.body_timeout_s, settings.max_connections)
    # ws="none": no route speaks WebSocket, and an upgraded connection would leave the HTTP timers behind
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            access_log=False, http=protocol_class(limits, app.state.metrics), ws="none",
                            timeout_keep_alive=settings.keepalive_timeout_s,  # type: ignore[arg-type]
                            timeout_graceful_shutdown=CLOSE_AFTER_DRAIN_S + 0.5)  # type: ignore[arg-type]
    server = DrainingServer(config, app.state.lifecycle, settings.drain_s)
    app.state.lifecycle.on_load_failure = server.fail
    server.run(sockets=sockets)
    if server.exit_code:
        print(f"error: {app.state.lifecycle.fatal}", file=sys.stderr)
    return server.exit_code


if __name__ == "__main__":
    # SIGPIPE stays ignored (Python's default): a client that resets its connection while we write the answer
    # must give that one request an EPIPE, not kill the process. faulthandler prints a traceback on a crash in
    # native code (ONNX Runtime, libjpeg) instead of a silent exit.
    faulthandler.enable()
    code = main()
    # The app has shut down: skip the interpreter's own teardown, which joins every worker thread and unloads
    # torch (1.0-2.4 s measured on a loaded 2-core machine) and would wait for as long as a thread is still in
    # an encoder call or a model download.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
