"""The real server (`python -m service`'s own main) on the bundled model, with a backend the test holds back.

Two gates, files in a directory the test owns, make start-up and inference wait for the test instead of for
the clock: loading does not finish until `open_load()`, and while `hold()` is on, every encoder call that
starts waits until `release()`, except the first n calls after `allow(n)` (warm-up included), which pass. Each
call writes a line to `entered` as it starts, so the test can wait until a batch is inside the encoder
(`wait_entered`) instead of sleeping. Everything else is the real server.

Run as `python -m tests.service.gated` (GatedServer does); GATE_DIR names the directory.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from bench.server import BenchServer

GATE_ENV = "GATE_DIR"
POLL_S = 0.01
_lock = threading.Lock()


def _wait_while(condition, timeout: float = 600.0) -> None:
    """Block this (server) thread while condition() holds; bounded so a forgotten gate cannot hang CI."""
    until = time.monotonic() + timeout
    while condition() and time.monotonic() < until:
        time.sleep(POLL_S)


def _allowed(gate: Path) -> int:
    """How many encoder calls pass while held (allow(n)); 0 unless the test said."""
    path = gate / "allowed"
    return int(path.read_text()) if path.exists() else 0


class GatedFactory:
    """gated_factory(gate) as a picklable object: with CLIP_WORKERS >= 1 it is sent to the engine process."""

    def __init__(self, gate: Path):
        self.gate = gate

    def __call__(self, settings):
        return gated_factory(self.gate)(settings)


def gated_factory(gate: Path):
    """A backend factory: waits for the load gate, then builds the torch backend with held encoders."""
    from service.backends.torch_backend import TorchBackend

    class HeldBackend(TorchBackend):
        def _enter(self, modality: str) -> None:
            with _lock:  # one encoder thread by default; the lock keeps call numbers right with more
                with open(gate / "entered", "a") as f:
                    f.write(modality + "\n")
                number = len((gate / "entered").read_text().splitlines())
            _wait_while(lambda: (gate / "hold").exists() and number > _allowed(gate))

        def encode_image(self, pixels):
            self._enter("image")
            return super().encode_image(pixels)

        def encode_text(self, tokens):
            self._enter("text")
            return super().encode_text(tokens)

    def factory(settings):
        _wait_while(lambda: not (gate / "load").exists())
        return HeldBackend(settings)

    return factory


def main() -> int:
    import service.__main__ as entry

    return entry.main(backend_factory=GatedFactory(Path(os.environ[GATE_ENV])))


class GatedServer(BenchServer):
    """The server process with gates in `gate_dir`; loading waits for open_load() unless `loaded`."""

    def __init__(self, env: dict[str, str], tmp_path: Path, loaded: bool = True):
        self.gate = tmp_path / "gate"
        self.gate.mkdir(parents=True, exist_ok=True)
        if loaded:
            self.open_load()
        super().__init__({"CLIP_THREADS": "2", GATE_ENV: str(self.gate), **env}, tmp_path / "server.log",
                         cmd=[sys.executable, "-m", "tests.service.gated"])

    def open_load(self) -> None:
        (self.gate / "load").touch()

    def hold(self) -> None:
        (self.gate / "hold").touch()

    def release(self) -> None:
        (self.gate / "hold").unlink(missing_ok=True)

    def allow(self, calls: int) -> None:
        """While held, let encoder calls through until `calls` have started in all (warm-up included)."""
        tmp = self.gate / "allowed.tmp"
        tmp.write_text(str(calls))
        tmp.replace(self.gate / "allowed")  # atomic: the server never reads a half-written number

    def entered(self) -> int:
        """Encoder calls started so far (warm-up included)."""
        path = self.gate / "entered"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def wait_entered(self, count: int, timeout: float = 60.0) -> None:
        """Until at least `count` encoder calls have started."""
        until = time.monotonic() + timeout
        while self.entered() < count:
            if time.monotonic() > until or self.proc.poll() is not None:
                raise TimeoutError(f"{self.entered()} encoder calls started, waited for {count}\n{self.log()}")
            time.sleep(0.02)

    def stop(self) -> int:
        self.open_load()
        self.release()  # nothing may stay held while the process drains
        return super().stop()


if __name__ == "__main__":
    import faulthandler

    faulthandler.enable()
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # as service/__main__.py does: no interpreter teardown waiting on held threads
