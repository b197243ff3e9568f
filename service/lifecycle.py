"""Start-up (load + warm up in the background), readiness, fatal errors and draining on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

from service import batch_refine
from service.backends import Backend, load_backend
from service.batch_probe import probe_backend, warm_plan
from service.engine import Engine, unset_limits
from service.errors import NotReady
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("service.lifecycle")

BackendFactory = Callable[[Settings], Backend]


class Lifecycle:
    """Owns the engine and answers: are we ready? are we draining? did something fatal happen?"""

    def __init__(self, settings: Settings, metrics: Metrics, backend_factory: BackendFactory = load_backend):
        self.settings, self.metrics, self.backend_factory = settings, metrics, backend_factory
        self.inference_pool = ThreadPoolExecutor(1, thread_name_prefix="inference")  # one encoder call at a time
        self.engine: Optional[Engine] = None
        self.ready = False
        self.draining = False
        self.fatal: Optional[str] = None
        self.inflight_requests = 0
        self.on_load_failure: Callable[[BaseException], None] = lambda exc: None  # __main__ exits the process
        self.on_loaded: Callable[[Engine], None] = lambda engine: None  # before ready (service/engine_server.py)
        self._task: Optional[asyncio.Task] = None
        self._refining: Optional[asyncio.Task] = None  # a probe cut short, finished in idle time (batch_refine.py)

    # --- start-up -------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._load(), name="model-load")

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            backend = await loop.run_in_executor(self.inference_pool, self.backend_factory, self.settings)
            limits = unset_limits(self.settings, backend)
            curves = await loop.run_in_executor(self.inference_pool, probe_backend, backend, limits,
                                                self.settings.batch_probe_s)
            engine = Engine(self.settings, backend, self.metrics, self.inference_pool, on_fatal=self.mark_fatal,
                            curves=curves)
            now, later = warm_plan(engine, curves, backend)
            await loop.run_in_executor(self.inference_pool, backend.warmup, *now)
        except Exception as exc:  # noqa: BLE001 - any load failure ends start-up with its cause
            self.fatal = f"model failed to load or warm up: {type(exc).__name__}: {exc}"
            log.error(self.fatal)
            self.on_load_failure(exc)
            return
        self.on_loaded(engine)
        self.engine = engine
        engine.start()
        self.ready = True
        self.metrics.ready.set(1)
        self.metrics.model_info.labels(backend.model_id, backend.name, backend.device, backend.precision,
                                       backend.fingerprint).set(1)
        log.info("ready in %.1fs: %s", time.perf_counter() - start, backend.describe())
        self._refining = batch_refine.start(engine, backend, limits,
                                            lambda fn, *args: loop.run_in_executor(self.inference_pool, fn, *args),
                                            warm=later)

    async def wait_loaded(self) -> None:
        if self._task:
            await asyncio.shield(self._task)

    # --- health ---------------------------------------------------------------------------------------------
    def is_ready(self) -> bool:
        return self.ready and not self.draining and self.fatal is None

    def readiness_reason(self) -> str:
        if self.fatal:
            return self.fatal
        if self.draining:
            return "draining: shutting down"
        return "ready" if self.ready else "loading model"

    def require_engine(self) -> Engine:
        """The engine, or a 503 that says why there is none to use."""
        if self.draining:
            self.metrics.rejected.labels("draining").inc()
            raise NotReady("server is shutting down; retry on another replica", retry_after=1)
        if self.engine is None or self.fatal:
            self.metrics.rejected.labels("not_ready").inc()
            raise NotReady(f"not ready: {self.readiness_reason()}", retry_after=5)
        return self.engine

    def mark_fatal(self, exc: BaseException) -> None:
        self.fatal = f"backend failed: {type(exc).__name__}: {exc}"[:500]
        self.metrics.ready.set(0)
        log.error("fatal backend error; /readyz now 503: %s", self.fatal)
        self._stop_refining()

    # --- shutdown -------------------------------------------------------------------------------------------
    def begin_drain(self) -> None:
        if not self.draining:
            self.draining = True
            self.metrics.ready.set(0)
            self._stop_refining()  # a probe call now would only delay the requests being finished
            log.info("draining: refusing new work, finishing %d in-flight request(s)", self.inflight_requests)

    async def drained(self, timeout_s: float) -> bool:
        """Wait until no request is in flight and no item queued, at most timeout_s."""
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout_s
        while loop.time() < until:
            if self.inflight_requests == 0 and (self.engine is None or self.engine.idle()):
                return True
            await asyncio.sleep(0.02)
        return False

    def _stop_refining(self) -> None:
        if self._refining is not None:
            self._refining.cancel()  # a probe call already on the inference thread finishes there, unawaited

    async def stop(self) -> None:
        self.ready = False
        self.metrics.ready.set(0)
        if self._task and not self._task.done():
            self._task.cancel()
        self._stop_refining()
        if self._refining is not None:
            await asyncio.gather(self._refining, return_exceptions=True)
        if self.engine:
            await self.engine.stop()
        self.inference_pool.shutdown(wait=False, cancel_futures=True)
