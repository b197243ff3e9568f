"""The front-end process's side of the split (CLIP_WORKERS >= 1): links to the engine processes, and the
Engine, Lifecycle and label sets that routes use, backed by them.

A front-end parses, authorises, limits, decodes images to uint8 and tokenises texts; everything that must be one
for the whole server (queue capacity, batchers, caches, label sets, the model) is in the engine processes
(service/engine_server.py). Routes are the same as in one process: RemoteEngine is an Engine whose request-side
steps (decoding in a thread pool, deadlines, /v1's mixed lists, classify = classifier + images + scores) are
Engine's own, and whose batcher and cache steps are calls to an engine.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Optional, Sequence

import numpy as np
import zmq

from models.preprocess import PreprocessConfig
from models.tokenizer import ClipTokenizer
from service import tracing
from service.backends.base import Backend
from service.batch_probe import BatchCurve
from service.engine import Engine
from service.errors import ApiError, BackendFailure, NotReady
from service.images import ImagePreprocessor
from service.ipc import LoopSocket, pack, raise_error, socket_dir, unpack_all
from service.labelset_store import LabelSet, StoredLabelSet
from service.lifecycle import Lifecycle
from service.metrics import Metrics
from service.pixel_ring import PixelRing
from service.settings import Settings

log = logging.getLogger("service.engine_client")

# A request's one image is decoded on the front-end's event loop (Engine.inline_decode_pixels) when its header says
# it has at most this many pixels, or twice the model input's if more (475 x 475 for a 336 px model): 0.3-0.4 ms of
# decoding for a 224 x 224 JPEG, about what the hand-off to the pool cost. On the 2-core machine, one 224 px JPEG per
# request, that cut a front-end's CPU per request by a quarter (1.51 -> 1.15 ms) and served 15-20 % more with one.
INLINE_DECODE_MIN_PIXELS = 256 * 256


def inline_decode_cap(size: tuple[int, int]) -> int:
    """The most pixels of an image a front-end decodes on its event loop, for a model whose input is `size`."""
    return max(INLINE_DECODE_MIN_PIXELS, 2 * size[0] * size[1])


HEARTBEAT_S = 0.25  # how often each front-end pings each engine
# An engine that has not answered a ping for this long is taken for dead: /readyz 503, calls fail with 503. Its event
# loop only waits on the socket and on the inference thread, so this is far above any healthy answer time.
HEARTBEAT_TIMEOUT_S = 5.0


@dataclass
class BackendInfo:
    """The model as routes see it (Backend's descriptive attributes), as the engine process reported it."""

    name: str
    device: str
    precision: str
    model_id: str
    fingerprint: str
    embed_dim: int
    context_length: int
    logit_scale: float
    logit_bias: Optional[float]
    preprocess: PreprocessConfig
    details: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)  # the backend's other plain attributes

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> "BackendInfo":
        pre = info["preprocess"]
        preprocess = PreprocessConfig(**{**pre, "size": tuple(pre["size"]), "mean": tuple(pre["mean"]),
                                         "std": tuple(pre["std"])})
        return cls(info["name"], info["device"], info["precision"], info["model_id"], info["fingerprint"],
                   info["embed_dim"], info["context_length"], info["logit_scale"], info["logit_bias"], preprocess,
                   info["describe"], info.get("attributes", {}))

    def __getattr__(self, name: str) -> Any:  # only for names not set above
        try:
            return self.__dict__["attributes"][name]
        except KeyError:
            raise AttributeError(name) from None

    def describe(self) -> dict[str, Any]:
        return dict(self.details)

    # Backend's own property where it has one (how label scores are activated, from logit_scale and logit_bias):
    # a front-end scores as the engine's backend would
    activation = vars(Backend).get("activation")


class EngineLink:
    """One DEALER socket to one engine process: calls matched to replies by id, a heartbeat, and the load this
    front-end has put on it."""

    def __init__(self, ctx: zmq.Context, address: str, index: int):
        self.address, self.index, self.ctx = address, index, ctx
        self.sock: Optional[LoopSocket] = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._early: dict[int, tuple[dict, list]] = {}  # replies that came before their caller waited
        self.status: dict[str, Any] = {}
        self.last_seen = time.monotonic()
        self.outstanding = 0  # items this front-end has sent and not had back
        self.dead: Optional[str] = None  # why calls to it fail now
        self.final = False  # dead for good (its process exited), not just slow to answer
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.address)
        self.sock = LoopSocket(sock, self._received)
        self._tasks = [asyncio.ensure_future(self._heartbeat())]

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self.sock is not None:
            self.sock.close()

    def new_id(self) -> int:
        return next(self._ids)

    def _received(self, frames: list) -> None:
        for header, arrays in unpack_all(frames):  # an engine sends what one loop iteration finished as one message
            self._reply(header, arrays)

    def _reply(self, header: dict[str, Any], arrays: list[np.ndarray]) -> None:
        if "load" in header:  # the engine's queue as of this reply: picks between heartbeats read it fresh
            self.status["load"] = header["load"]
        rid = header.get("id", 0)
        waiter = self._pending.pop(rid, None)
        if waiter is None:
            self._early[rid] = (header, arrays)
        elif not waiter.done():
            waiter.set_result((header, arrays))

    def cancel(self, rid: int) -> None:
        """Tell the engine that nobody waits for request `rid` any more (its queued items are dropped)."""
        self._early.pop(rid, None)
        try:
            self.sock.send(pack({"op": "cancel", "id": rid}))  # type: ignore[union-attr]
        except BackendFailure:
            pass  # the engine is gone: nothing of the request is left to drop

    async def _heartbeat(self) -> None:
        while True:
            try:
                header, _ = await asyncio.wait_for(self.call({"op": "ping"}), HEARTBEAT_TIMEOUT_S)
                self.status, self.last_seen = header, time.monotonic()
                if self.dead is not None and not self.final:  # it was only slow: usable again
                    log.warning("engine %d answers again", self.index)
                    self.dead = None
            except (asyncio.TimeoutError, ApiError):
                pass
            if time.monotonic() - self.last_seen > HEARTBEAT_TIMEOUT_S and self.dead is None:
                self.fail(f"engine {self.index} has not answered for {HEARTBEAT_TIMEOUT_S:g}s")
            await asyncio.sleep(HEARTBEAT_S)

    def fail(self, reason: str, final: bool = False) -> None:
        """The engine is gone (`final`: its process exited) or not answering: every call waiting on it fails with
        503 now, and so does every later one until it answers a heartbeat again (never, when final)."""
        self.dead, self.final = reason, self.final or final
        log.error("%s; failing %d call(s) waiting on it", reason, len(self._pending))
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(BackendFailure(f"{reason}; retry on another replica", retry_after=5))
        self._pending.clear()

    @property
    def ready(self) -> bool:
        return self.dead is None and bool(self.status.get("ready"))

    @property
    def load(self) -> int:
        """Items queued in the engine (as of its latest reply to this front-end) plus those this front-end has in
        flight there."""
        return int(self.status.get("load", 0)) + self.outstanding

    async def call(self, header: dict[str, Any], arrays: Sequence[np.ndarray] = (),
                   rid: Optional[int] = None) -> tuple[dict, list]:
        """Send one message and wait for its reply; an error reply is raised as its ApiError. If the wait is
        cancelled (the client left), the engine is told to cancel the request, so its queued items are dropped."""
        if self.dead is not None and header["op"] != "ping":
            raise BackendFailure(f"{self.dead}; retry on another replica", retry_after=5)
        rid = self.new_id() if rid is None else rid
        early = self._early.pop(rid, None)
        waiter = asyncio.get_running_loop().create_future()
        if early is None:
            self._pending[rid] = waiter
        else:
            waiter.set_result(early)
        try:
            self.sock.send(pack({**header, "id": rid, **_trace_fields()}, arrays))  # type: ignore[union-attr]
        except BackendFailure:
            self._pending.pop(rid, None)
            raise
        try:
            reply, out = await waiter
        except asyncio.CancelledError:
            self._pending.pop(rid, None)
            self.cancel(rid)
            raise
        raise_error(reply)
        return reply, out


def _batch(pixels: list[np.ndarray]) -> np.ndarray:
    """[H, W, 3] images -> one [n, H, W, 3] array; one image is viewed as a batch of one, not copied."""
    return pixels[0][None] if len(pixels) == 1 else np.stack(pixels)


def _trace_fields() -> dict[str, str]:
    """The request span's W3C traceparent, for the engine's spans of this call (its queue_wait and inference) to sit
    in the request's trace; nothing when tracing is off or no request span is current (heartbeats)."""
    parent = tracing.traceparent()
    return {"traceparent": parent} if parent else {}


class EnginePool:
    """Every engine process this front-end talks to: readiness, least-loaded choice, calls to one or all."""

    def __init__(self, addresses: Sequence[str]):
        self.ctx = zmq.Context()
        self.links = [EngineLink(self.ctx, a, i) for i, a in enumerate(addresses)]
        self._turn = itertools.count()

    @property
    def directory(self) -> Optional[str]:
        """The supervisor's temp dir the engines' sockets are in (ipc://<dir>/engine-<i>.sock), if they all are."""
        dirs = {socket_dir(link.address) for link in self.links}
        return dirs.pop() if len(dirs) == 1 else None

    def start(self) -> None:
        for link in self.links:
            link.start()

    async def close(self) -> None:
        for link in self.links:
            await link.close()
        self.ctx.term()

    def info(self) -> Optional[dict[str, Any]]:
        """The first engine's model and batch sizes, once every engine is ready (they serve the same model)."""
        return self.links[0].status.get("info") if self.ready() else None

    def ready(self) -> bool:
        return all(link.ready for link in self.links)

    def reason(self) -> str:
        for link in self.links:
            if link.dead:
                return link.dead
            if not link.ready:
                return f"engine {link.index}: {link.status.get('reason', 'starting')}"
        return "ready"

    def pick(self) -> EngineLink:
        """The live engine with the least work queued, as of its latest reply (every reply carries its load); ties
        taken in turn, so that front-ends, which see each other's work only through those replies, still spread
        theirs."""
        live = [link for link in self.links if link.dead is None]
        if not live:
            raise BackendFailure(f"{self.reason()}; retry on another replica", retry_after=5)
        turn = next(self._turn) % len(live)
        return min(live[turn:] + live[:turn], key=lambda link: link.load)

    @asynccontextmanager
    async def charged(self, n: int) -> AsyncIterator[EngineLink]:
        """The least-loaded engine, with n items counted against it while the block runs."""
        link = self.pick()
        link.outstanding += n
        try:
            yield link
        finally:
            link.outstanding -= n

    async def all(self, header: dict[str, Any]) -> list[dict]:
        """The same call to every engine (label sets are kept by each); the first error is raised."""
        replies = await asyncio.gather(*(link.call(dict(header)) for link in self.links))
        return [r for r, _ in replies]


class _Depth:
    """What /info and draining read of a batcher in a front-end: the engine's batch size as of its last heartbeat (it
    changes when the engine finishes a batch-size probe after ready); nothing queued here."""

    def __init__(self, pool: EnginePool, key: str, first: int):
        self._pool, self._key, self._first, self.depth = pool, key, first, 0

    @property
    def max_batch(self) -> int:
        info = self._pool.info()
        return int(info[self._key]) if info else self._first


class RemoteEngine(Engine):
    """An Engine whose batchers, caches and classifiers are in the engine processes. Decoding (to uint8) and
    tokenising run here, in this process's thread pool; the rest are calls through the pool."""

    def __init__(self, settings: Settings, info: dict[str, Any], pool: EnginePool, metrics: Metrics):
        self.pool, self._info = pool, info
        # Engine's own constructor, so that every attribute it sets is here too; only its queue step
        # (_build_queues: batchers and caches, which live in the engine process) and its image step are this class's
        super().__init__(settings, BackendInfo.from_info(info), metrics, inference_pool=None)  # type: ignore
        self.inline_decode_pixels = inline_decode_cap(self.backend.preprocess.size)
        h, w = self.backend.preprocess.size
        directory = pool.directory
        self.ring = PixelRing.create(directory, (h, w, 3), settings.shm_pixels_mb) if directory else None
        tok = info.get("tokenizer")
        self.tokenizer: Optional[Callable[[list[str]], np.ndarray]] = None
        if tok is not None:  # open_clip's CLIP BPE, rebuilt here without open_clip; others tokenise in the engine
            self.tokenizer = ClipTokenizer(tok["context_length"], tok["bpe_path"], tok["clean_budget"])

    def _image_preprocessor(self) -> ImagePreprocessor:
        """Decode + resize to uint8 [H, W, 3] on the CPU: the engine normalises (service/engine_server.py)."""
        return ImagePreprocessor(self.backend.preprocess, self.settings.max_image_pixels,
                                 self.settings.reduced_jpeg_decode, "cpu", as_uint8=True)

    def _build_queues(self, inference_pool: Optional[ThreadPoolExecutor], on_fatal: Any) -> None:
        """No batchers or caches here: only the engine's batch sizes, which /info and draining read."""
        info = self._info
        self.images = _Depth(self.pool, "image_max_batch", info["image_max_batch"])  # type: ignore[assignment]
        self.texts = _Depth(self.pool, "text_max_batch", info["text_max_batch"])  # type: ignore[assignment]

    @property  # type: ignore[override]
    def curves(self) -> dict[str, BatchCurve]:
        """The engine's batch curves as of its last heartbeat, for /info (finished after ready, they change)."""
        measured = (self.pool.info() or self._info).get("measured", {})
        return {m: BatchCurve.from_dict(m, c) for m, c in measured.items()}

    @curves.setter
    def curves(self, value: dict[str, BatchCurve]) -> None:
        pass  # Engine.__init__ sets its own; a front-end reads the engine process's

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.preprocess_pool.shutdown(wait=False, cancel_futures=True)
        if self.ring is not None:
            self.ring.close()

    def idle(self) -> bool:
        return True  # queued work is the engine's; a front-end drains its requests (Lifecycle.inflight_requests)

    async def embed_images(self, images: list[bytes], deadline: Optional[float] = None) -> np.ndarray:
        """Decoded here to uint8 and embedded in the least-loaded engine, whose queue capacity is the server's.

        Room is reserved first (`reserve`: 503 at once when the queue is full, so a full queue answers before any
        decoding, and images count against the capacity from before they are decoded, as in one process); then the
        pixels follow (`pixels`). A request's one small image, while that engine's queue is at most half full (as
        of its latest reply, plus what this front-end has in flight there), goes in one trip instead: decoded on
        the event loop, then `embed`, the engine taking the room on arrival (503 / 413 then). Its decode blocks
        this front-end's loop, so at most one such image per front-end is uncounted at a time."""
        deadline = self.deadline() if deadline is None else deadline
        async with self.pool.charged(len(images)) as link:
            if len(images) == 1 and link.load <= self.settings.max_queue // 2:  # link.load counts this image
                pixels = self._decode_small(images[0], deadline) if self.inline_decode_pixels else None
                if pixels is not None:
                    _, out = await self._call_with_pixels(link, {"op": "embed", "deadline": deadline}, [pixels])
                    return out[0]
            rid = link.new_id()
            await link.call({"op": "reserve", "n": len(images), "deadline": deadline}, rid=rid)
            try:
                pixels_list = await self.preprocess_images(images, deadline)
            except BaseException:
                link.cancel(rid)  # give the room back
                raise
            _, out = await self._call_with_pixels(link, {"op": "pixels"}, pixels_list, rid)
        return out[0]

    async def _call_with_pixels(self, link: EngineLink, header: dict[str, Any], pixels: list[np.ndarray],
                                rid: Optional[int] = None) -> tuple[dict, list]:
        """A call carrying decoded images: in slots of this front-end's shared-memory ring (service/pixel_ring.py),
        free again when the call is over, or, when the ring has no room for them, as a frame of the message."""
        slots = self.ring.take(pixels) if self.ring is not None else None
        if slots is None:
            return await link.call(header, [_batch(pixels)], rid=rid)
        try:
            return await link.call({**header, "ring": self.ring.path, "slots": slots}, rid=rid)  # type: ignore
        finally:
            self.ring.give_back(slots)  # type: ignore[union-attr]

    def _tokenize(self, texts: list[str]) -> np.ndarray:
        start = time.perf_counter()
        tokens = self.tokenizer(texts)  # type: ignore[misc]
        self.metrics.preprocess.labels("text").observe((time.perf_counter() - start) / max(1, len(texts)))
        return tokens

    async def embed_texts(self, texts: list[str], deadline: Optional[float] = None) -> np.ndarray:
        """Tokenised here when this process can (CLIP's BPE); the engine looks up its prompt cache, queues the
        misses and answers the embeddings."""
        deadline = self.deadline() if deadline is None else deadline
        arrays: list[np.ndarray] = []
        if self.tokenizer is not None:
            loop = asyncio.get_running_loop()
            arrays = [await loop.run_in_executor(self.preprocess_pool, self._tokenize, texts)]
        async with self.pool.charged(len(texts)) as link:
            _, out = await link.call({"op": "texts", "texts": texts, "deadline": deadline}, arrays)
        return out[0]

    async def count_tokens(self, texts: list[str]) -> int:
        if not texts:
            return 0
        if self.tokenizer is not None:
            tokens = await asyncio.get_running_loop().run_in_executor(self.preprocess_pool, self.tokenizer, texts)
            return int(np.count_nonzero(tokens))
        reply, _ = await self.pool.pick().call({"op": "count_tokens", "texts": texts})
        return int(reply["n"])

    async def classifier(self, labels: tuple[str, ...], templates: tuple[str, ...],
                         deadline: Optional[float] = None) -> np.ndarray:
        deadline = self.deadline() if deadline is None else deadline
        async with self.pool.charged(len(labels) * len(templates)) as link:
            _, out = await link.call({"op": "classifier", "labels": list(labels), "templates": list(templates),
                                      "deadline": deadline})
        return out[0]


class RemoteLabelSets:
    """Label sets kept by the engine processes: read from one, written to all, so every front-end sees each PUT."""

    def __init__(self, lifecycle: "RemoteLifecycle"):
        self.lifecycle = lifecycle

    def _pool(self) -> EnginePool:
        self.lifecycle.require_engine()  # 503 while loading or after a failure, as in one process
        return self.lifecycle.pool

    async def get(self, name: str) -> StoredLabelSet:
        reply, _ = await self._pool().links[0].call({"op": "ls_get", "name": name})
        return _stored(reply["labelset"])

    async def list(self) -> list[StoredLabelSet]:
        reply, _ = await self._pool().links[0].call({"op": "ls_list"})
        return [_stored(d) for d in reply["labelsets"]]

    async def delete(self, name: str) -> None:
        await self._pool().all({"op": "ls_delete", "name": name})

    async def put(self, name: str, labelset: LabelSet, compute: Callable, fingerprint: str) -> StoredLabelSet:
        """Each engine computes and stores the classifier itself (`compute` is this process's, unused)."""
        deadline = self.lifecycle.require_engine().deadline()
        replies = await self._pool().all({"op": "ls_put", "name": name, "labels": list(labelset.labels),
                                          "templates": list(labelset.templates), "deadline": deadline})
        return _stored(replies[0]["labelset"])


def _stored(d: dict[str, Any]) -> StoredLabelSet:
    return StoredLabelSet(d["name"], tuple(d["labels"]), tuple(d["templates"]), d["fingerprint"])


class RemoteLifecycle(Lifecycle):
    """Readiness of a front-end: ready while every engine answers its heartbeat and says it is ready."""

    def __init__(self, settings: Settings, metrics: Metrics, addresses: Sequence[str]):
        super().__init__(settings, metrics)
        self.pool = EnginePool(addresses)

    def start(self) -> None:
        super().start()
        # the supervisor's word that an engine process exited (service/supervisor.py)
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self.engine_died, "an engine process exited")

    async def _load(self) -> None:
        """Wait for the engines to load their model (they report it in their heartbeat)."""
        self.pool.start()
        start = time.perf_counter()
        while self.pool.info() is None:
            if any(link.final for link in self.pool.links):
                return  # engine_died() has marked this front-end failed; the supervisor is stopping the server
            await asyncio.sleep(HEARTBEAT_S)
        info = self.pool.info()
        self.engine = RemoteEngine(self.settings, info, self.pool, self.metrics)  # type: ignore[arg-type]
        self.ready = True
        self.metrics.ready.set(1)
        log.info("front-end %d ready in %.1fs: %d engine(s), model %s", os.getpid(), time.perf_counter() - start,
                 len(self.pool.links), info["model_id"])  # type: ignore[index]

    def is_ready(self) -> bool:
        return super().is_ready() and self.pool.ready()

    def readiness_reason(self) -> str:
        reason = super().readiness_reason()
        return self.pool.reason() if reason == "ready" else reason

    def require_engine(self) -> Engine:
        engine = super().require_engine()
        if not self.pool.ready():
            self.metrics.rejected.labels("not_ready").inc()
            raise NotReady(f"not ready: {self.pool.reason()}", retry_after=5)
        return engine

    def engine_died(self, reason: str) -> None:
        """The supervisor says an engine process has exited: fail its calls now, /readyz 503 from here on."""
        for link in self.pool.links:
            link.fail(reason, final=True)
        self.mark_fatal(RuntimeError(reason))

    async def stop(self) -> None:
        await super().stop()
        await self.pool.close()
