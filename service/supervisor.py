"""`python -m service` with CLIP_WORKERS >= 1: the supervisor of one engine process per device and CLIP_WORKERS
HTTP front-end processes.

    supervisor: binds CLIP_HOST:CLIP_PORT once, starts the processes (multiprocessing, spawn), watches them
      front-end x CLIP_WORKERS: uvicorn on the inherited listening socket (the kernel spreads connections);
                                HTTP, auth, limits, parsing, decoding to uint8, tokenising (service/engine_client.py)
      engine x devices:         the model, batchers, prompt cache, label sets, queue capacity
                                (service/engine_server.py), a ZeroMQ ROUTER on ipc://<temp dir>/engine-<i>.sock

Never half-alive: if any process exits on its own, the front-ends are told (/readyz 503, calls to a dead engine fail
with 503), stopped, and the supervisor exits 1 so the orchestrator restarts the server. An engine that stops
answering without exiting is killed after CLIP_ENGINE_HANG_S (service/hang_watch.py), and the same follows.
SIGTERM (or SIGINT) drains: front-ends stop accepting and finish their requests within CLIP_DRAIN_S, then the
engines finish what is queued, then exit 0.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from service.settings import Settings

if TYPE_CHECKING:
    from service.hang_watch import HangWatch

log = logging.getLogger("service.supervisor")

# Engines stop after the front-ends, when nothing is in flight any more: this is left for them at the least, and the
# front-ends are stopped this much before the end of CLIP_DRAIN_S + EXIT_MARGIN_S, so the whole server is still gone
# within that bound (the Kubernetes grace period is derived from it, docs/deploy.md).
ENGINE_STOP_S = 2.0
TEMP_PREFIX = "clip-serve-"  # the temp dir of one server's sockets and metrics files
# What every process the supervisor starts receives when the supervisor dies, even by SIGKILL (Linux's parent-death
# signal), and turns into one SIGTERM of its own (drain_once): it drains as when the supervisor stops it. Not SIGTERM
# itself: the kernel signals once per supervisor thread that goes (ZeroMQ's, service/hang_watch.py, besides the main
# one), and a second SIGTERM would stop a front-end without draining; and an engine must know the supervisor is gone,
# to remove the temp dir no one else will (looking at its parent cannot tell: at the first signal the supervisor's
# other threads are still its parent).
PARENT_DIED = signal.SIGUSR2


def bind(host: str, port: int) -> socket.socket:
    """The one listening socket every front-end accepts on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def as_child() -> None:
    """First step of every process the supervisor starts (with its PARENT_DIED handler set already). Its own process
    group: a terminal's Ctrl-C reaches only the supervisor, which drains the others in order (a front-end that got
    SIGINT and then SIGTERM would stop without draining). And PARENT_DIED when the supervisor dies, even by SIGKILL
    (Linux), so no process outlives it."""
    os.setpgrp()
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, PARENT_DIED)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the supervisor's own exit path still stops its children
        pass
    if orphaned():  # the supervisor died before the line above: no signal will come, and nobody wants this process
        os._exit(1)


_parent_gone = threading.Event()


def drain_once(signum: int, frame: Any) -> None:
    """A child's PARENT_DIED handler: drain as when the supervisor stops it (one SIGTERM), once."""
    signal.signal(PARENT_DIED, signal.SIG_IGN)
    _parent_gone.set()
    os.kill(os.getpid(), signal.SIGTERM)


def parent_gone() -> bool:
    """Whether this process was told that the supervisor died (PARENT_DIED)."""
    return _parent_gone.is_set()


def temp_root() -> Optional[str]:
    """Where the temp dir of sockets, metrics files and decoded-image rings goes: /dev/shm (RAM) where there is one
    this process may write to (the rings, service/pixel_ring.py, need RAM; prometheus_client's multiprocess files
    are best there too), else the system's temp dir."""
    from service.pixel_ring import SHM_ROOT

    return SHM_ROOT if os.path.isdir(SHM_ROOT) and os.access(SHM_ROOT, os.W_OK | os.X_OK) else None


def orphaned() -> bool:
    """Whether the supervisor that started this process has died (this process was re-parented)."""
    parent = multiprocessing.parent_process()
    return parent is not None and os.getppid() != parent.pid


def remove_temp_dir(address: str) -> None:
    """An engine's last step when its supervisor was killed (SIGKILL runs no cleanup there): remove the
    supervisor's temp dir of sockets and metrics files, named by the engine's address ipc://<dir>/engine-<i>.sock.
    Front-ends still draining keep writing to their open metrics files; nothing else needs the dir any more."""
    from service.ipc import socket_dir

    temp = socket_dir(address)
    if temp is not None and os.path.basename(temp).startswith(TEMP_PREFIX):
        shutil.rmtree(temp, ignore_errors=True)


def run_frontend(settings_data: dict[str, Any], sock: socket.socket, engines: list[str], index: int) -> None:
    """A front-end process's entry point (multiprocessing, spawn): the app with remote engines on `sock`."""
    signal.signal(PARENT_DIED, drain_once)
    as_child()
    from service.__main__ import configure_logging, serve
    from service.app import create_app

    from service.tracing import TracingUnavailable

    settings = Settings(**settings_data)
    configure_logging(settings.log_level)
    try:
        app = create_app(settings, engines=engines)
    except TracingUnavailable as exc:  # the supervisor sees this front-end exit and stops the server
        print(f"error: {exc}", file=sys.stderr)
        os._exit(2)
    log.info("front-end %d: pid %d", index, os.getpid())
    code = serve(settings, app, sockets=[sock])
    logging.shutdown()
    os._exit(code)


class Supervisor:
    """Starts, watches and stops the processes of one server."""

    def __init__(self, settings: Settings, backend_factory: Callable):
        self.settings, self.backend_factory = settings, backend_factory
        self.tmp = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=temp_root())
        self.metrics_dir = os.path.join(self.tmp, "metrics")
        os.mkdir(self.metrics_dir)
        # before any process starts: prometheus_client picks its multiprocess mode when a process imports it
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        self.devices = settings.engine_devices()
        self.addresses = [f"ipc://{self.tmp}/engine-{i}.sock" for i in range(len(self.devices))]
        self.ctx = multiprocessing.get_context("spawn")
        self.engines: list[Any] = []
        self.frontends: list[Any] = []
        self.stop_requested = threading.Event()

    def start(self) -> None:
        from service.engine_server import run_engine

        # only what was set: a child's Settings(**data) then tells set from default as this one does (a batch size
        # left unset is measured at warm-up, service/engine.py max_batch); the rest are defaults there too
        data = self.settings.model_dump(exclude_unset=True)
        sock = bind(self.settings.host, self.settings.port)
        self.engines = [self.ctx.Process(target=run_engine, args=(data, dev, addr, i, self.backend_factory),
                                        name=f"clip-engine-{i}")
                        for i, (dev, addr) in enumerate(zip(self.devices, self.addresses))]
        self.frontends = [self.ctx.Process(target=run_frontend, args=(data, sock, self.addresses, i),
                                           name=f"clip-frontend-{i}") for i in range(self.settings.workers)]
        for p in self.engines + self.frontends:
            p.start()
        sock.close()  # the front-ends hold their own copies
        log.info("process layout: supervisor pid %d; %d front-end(s) on %s:%d, pids %s; engine(s) %s; metrics in %s",
                 os.getpid(), len(self.frontends), self.settings.host, self.settings.port,
                 [p.pid for p in self.frontends],
                 ", ".join(f"{d} pid {p.pid} at {a}" for d, p, a in zip(self.devices, self.engines, self.addresses)),
                 self.metrics_dir)

    def watch(self) -> int:
        """Until SIGTERM/SIGINT (drain, 0) or a process exiting on its own (stop everything, 1). An engine silent
        for longer than CLIP_ENGINE_HANG_S is killed here, and so exits: a hung engine stops the server as a crashed
        one does (service/hang_watch.py says why the supervisor watches, not the front-ends)."""
        from service.hang_watch import HangWatch

        procs = self.engines + self.frontends
        hangs = HangWatch(self.addresses, self.settings.engine_hang_s) if self.settings.engine_hang_s else None
        try:
            return self._watch(procs, hangs)
        finally:
            if hangs is not None:
                hangs.close()

    def _watch(self, procs: list, hangs: Optional["HangWatch"]) -> int:
        while not self.stop_requested.is_set():
            multiprocessing.connection.wait([p.sentinel for p in procs], timeout=0.2)
            for i, silent_s in hangs.silent() if hangs is not None else ():
                self._kill_hung(i, silent_s)
            gone = [p for p in procs if not p.is_alive()]
            if gone and not self.stop_requested.is_set():
                p = gone[0]
                log.error("%s (pid %d) exited with %s; stopping the server (exit 1) so it is restarted whole",
                          p.name, p.pid, p.exitcode)
                if p in self.engines:
                    self._signal(self.frontends, signal.SIGUSR1)  # /readyz 503 and its calls fail, at once
                self._stop(drain_s=min(self.settings.drain_s, 5.0))
                return 1
        log.info("stopping: draining %d front-end(s) within %gs", len(self.frontends), self.settings.drain_s)
        self._stop(drain_s=self.settings.drain_s)
        return 0

    def _kill_hung(self, index: int, silent_s: float) -> None:
        p = self.engines[index]
        if p.is_alive():
            log.error("engine %d (%s, pid %d) has not answered for %.1fs (CLIP_ENGINE_HANG_S=%g); killing it, so "
                      "the server stops and exits 1", index, p.name, p.pid, silent_s, self.settings.engine_hang_s)
            p.kill()  # SIGKILL: a stopped or deadlocked process takes no SIGTERM
            p.join(5)

    def _stop(self, drain_s: float) -> None:
        from service.__main__ import EXIT_MARGIN_S

        until = time.monotonic() + drain_s + EXIT_MARGIN_S - 0.5
        self._signal(self.frontends, signal.SIGTERM)  # each drains itself (service/__main__.py DrainingServer)
        self._join(self.frontends, until - ENGINE_STOP_S - time.monotonic())
        self._signal(self.engines, signal.SIGTERM)  # their queues are empty now that no front-end is left
        self._join(self.engines, max(ENGINE_STOP_S, until - time.monotonic()))

    @staticmethod
    def _signal(procs: list, sig: int) -> None:
        for p in procs:
            if p.is_alive():
                try:
                    os.kill(p.pid, sig)
                except ProcessLookupError:
                    pass

    def _join(self, procs: list, timeout: float) -> None:
        from prometheus_client.multiprocess import mark_process_dead

        until = time.monotonic() + timeout
        for p in procs:
            p.join(max(0.0, until - time.monotonic()))
            if p.is_alive():
                log.warning("%s (pid %d) still running after %.0fs; killing it", p.name, p.pid, timeout)
                p.kill()
                p.join(5)
            mark_process_dead(p.pid, self.metrics_dir)

    def cleanup(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def run_supervisor(settings: Settings, backend_factory: Callable) -> int:
    """Run the server's processes until SIGTERM/SIGINT (exit 0 after draining) or one of them exits (exit 1)."""
    from service import tracing

    try:
        tracing.require(settings)  # before any process starts: a missing extra is one error, not one per process
    except tracing.TracingUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sup = Supervisor(settings, backend_factory)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sup.stop_requested.set())
    try:
        try:
            sup.start()
        except OSError as exc:  # the port is taken, say: as uvicorn reports it in one process
            log.error("could not start: %s", exc)
            sup._stop(drain_s=0)
            return 1
        return sup.watch()
    finally:
        sup.cleanup()
