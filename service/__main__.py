"""`python -m service`: validate settings, log them, serve with uvicorn, drain on SIGTERM, exit non-zero if
the model cannot be loaded."""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import sys

import uvicorn
from pydantic import ValidationError

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


class DrainingServer(uvicorn.Server):
    """On the first SIGTERM/SIGINT: stop admitting (503), finish queued work within drain_s, then exit."""

    def __init__(self, config: uvicorn.Config, lifecycle, drain_s: float):
        super().__init__(config)
        self.lifecycle, self.drain_s = lifecycle, drain_s
        self.exit_code = 0
        self._draining = False

    def handle_exit(self, sig: int, frame) -> None:
        if self._draining:  # a second signal: stop now (uvicorn re-raises it on the way out)
            return super().handle_exit(sig, frame)
        self._draining = True
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

    def fail(self, exc: BaseException) -> None:
        self.exit_code = 1
        self.should_exit = True


def main() -> int:
    settings = load_settings()
    configure_logging(settings.log_level)
    from service.app import create_app

    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            access_log=False, timeout_graceful_shutdown=int(settings.drain_s) + 5)
    server = DrainingServer(config, app.state.lifecycle, settings.drain_s)
    app.state.lifecycle.on_load_failure = server.fail
    server.run()
    if server.exit_code:
        print(f"error: {app.state.lifecycle.fatal}", file=sys.stderr)
    return server.exit_code


if __name__ == "__main__":
    # SIGPIPE stays ignored (Python's default): a client that resets its connection while we write the answer
    # must give that one request an EPIPE, not kill the process. faulthandler prints a traceback on a crash in
    # native code (ONNX Runtime, libjpeg) instead of a silent exit.
    faulthandler.enable()
    sys.exit(main())
