"""The engine process (CLIP_WORKERS >= 1): one per device; owns the model, the batchers, the prompt cache, the
label sets and the queue capacity, and answers the front-end processes over a ZeroMQ ROUTER socket.

Each request from a front-end runs as one task here, keyed by (front-end, request id); a `cancel` from the front-end
(its client left) cancels that task, so its queued items are dropped by the batcher as in one process. An untraced
`embed` (most calls) runs no task: its items' futures stand for it, and a `cancel` cancels them (`_embed_now`).
Images come decoded, as uint8 [H, W, 3] each, in slots of the front-end's shared-memory ring (service/pixel_ring.py) or as a
uint8 [n, H, W, 3] frame of the message, normalised here as a batch (models.preprocess.normalise; on the GPU for CUDA
backends, service/device_pixels.py) right before the encoder: in one trip (`embed`: room taken on arrival, or 503 /
413) while the front-end sees this queue at most half full, else in two steps, so that a full queue still answers
before any decoding: `reserve` takes room for n images (or refuses), the front-end decodes, then `pixels`.
A call may carry its request span's W3C `traceparent` (service/tracing.py): the spans this process makes for it
(queue_wait, inference) are then children of that span, exported by this process's own tracer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Any, Callable, Optional

import numpy as np
import zmq

from models.preprocess import normalise
from service import tracing
from service.backends.base import exact_tokenizer
from service.engine import Engine
from service.errors import BackendFailure, DeadlineExceeded, InvalidField
from service.ipc import LoopSocket, error_fields, pack, pack_many, socket_dir, unpack
from service.labelset_store import LabelSet, LabelSetStore, LocalLabelSets
from service.lifecycle import Lifecycle
from service.metrics import Metrics
from service.pixel_ring import RingReader
from service.settings import Settings

log = logging.getLogger("service.engine_server")

Key = tuple[bytes, int]  # (front-end socket identity, request id)


def pixel_encoder(engine: Engine) -> tuple[Callable[..., np.ndarray], bool]:
    """The image batcher's encode step for uint8 pixels, and whether it normalises on the device: a backend's own
    `encode_pixels` when it has one; with eager PyTorch on CUDA, the device version (pinned upload, normalise on the
    GPU, service/device_pixels.py); otherwise normalise on the CPU, then the backend's encoder. The device versions
    take the batch's items (uint8 [H, W, 3] each) and copy each once, into their upload buffer; the CPU one takes
    a stacked uint8 [B, H, W, 3] batch."""
    backend = engine.backend
    own = getattr(backend, "encode_pixels", None)  # Backend's attribute; duck-typed backends may lack it
    if own is not None:
        return own, True
    if backend.device.startswith("cuda"):
        from service.device_pixels import device_encoder  # torch; not run on a GPU yet (README)

        encode = device_encoder(backend, engine.images.max_batch)
        if encode is not None:
            return encode, True
    return (lambda batch: backend.encode_image(normalise(batch, backend.preprocess))), False


def two_in_flight(engine: Engine) -> None:
    """On a GPU, two image batches at once (not run on a GPU yet): the next one's upload overlaps this one's
    compute (service/device_pixels.py); their own two threads, so texts keep the inference thread."""
    from concurrent.futures import ThreadPoolExecutor

    engine.images.executor = ThreadPoolExecutor(2, thread_name_prefix="inference-image")
    engine.images.in_flight = 2


def install_pixel_encoder(engine: Engine) -> None:
    """From here on the image batcher's items are uint8 [H, W, 3] pixels (the float path warmed the encoder up)."""
    encode, on_device = pixel_encoder(engine)
    if not on_device:
        engine.images.encode = encode
        return
    engine.images.encode_items = encode  # no np.stack first: each image is copied once, into the upload buffer
    two_in_flight(engine)  # its two slots (buffer + stream each) let two batches run at once; other runtimes: one


# The front-end decodes a reserved request's images up to its deadline, then sends their pixels or cancels, and
# counts the images its deadline refused (clip_rejected_total{reason="deadline"}), as one process does. The engine
# waits this much past the deadline before it gives the room back on its own (a front-end gone silent), and counts
# nothing then: counting here too counted every such image twice.
PIXELS_GRACE_S = 5.0


class EngineServer:
    """Answers the front-ends' requests with one Engine (loaded and warmed up by a Lifecycle)."""

    def __init__(self, settings: Settings, address: str, lifecycle: Lifecycle):
        self.settings, self.address, self.lifecycle = settings, address, lifecycle
        self.labelsets = LocalLabelSets(LabelSetStore(settings.max_labelsets,
                                                      int(settings.labelset_cache_mb * 1024 * 1024)))
        self.ctx = zmq.Context()
        self.sock: LoopSocket | None = None
        self.tasks: dict[Key, asyncio.Future] = {}  # what each request waits on: its task, or its items' futures
        self.waiters: dict[Key, asyncio.Future] = {}  # reserved image requests waiting for their pixels
        self.outbox: dict[bytes, list[tuple[dict[str, Any], tuple]]] = {}  # replies this loop iteration (_send)
        self.rings: Optional[RingReader] = None  # the front-ends' shared-memory slots of decoded images

    # --- the socket -----------------------------------------------------------------------------------------
    def serve(self) -> None:
        """Answer on the address from now on (in this event loop)."""
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(self.address)
        self.sock = LoopSocket(sock, self._received)

    def _received(self, frames: list) -> None:
        header, arrays = unpack(frames[1:])
        self._dispatch(frames[0].bytes, header, arrays)

    def _send(self, ident: bytes, header: dict[str, Any], arrays: tuple = ()) -> None:
        """Queue a reply; what this loop iteration queued leaves at the start of the next, one message per front-end
        (a batch finishes many requests at once: one send each cost the event loop more than the rest of a reply)."""
        if not self.outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self.outbox.setdefault(ident, []).append((header, arrays))

    def _flush(self) -> None:
        assert self.sock is not None
        # every reply carries the queue load as it is now, so a front-end's least-loaded pick reads it as of its
        # latest reply from here, not only as of the last heartbeat (service/engine_client.py EnginePool.pick)
        load = self.load()
        outbox, self.outbox = self.outbox, {}
        for ident, replies in outbox.items():
            replies = [({**header, "load": load}, arrays) for header, arrays in replies]
            frames = pack(*replies[0]) if len(replies) == 1 else pack_many(replies)
            try:
                self.sock.send([ident, *frames])  # a ROUTER drops what a gone front-end cannot take
            except BackendFailure:  # ZeroMQ's queue to it is full: that front-end's calls time out as it stalls
                log.warning("could not answer %d request(s) of a front-end: its queue is full", len(replies))

    def _dispatch(self, ident: bytes, header: dict[str, Any], arrays: list[np.ndarray]) -> None:
        op, key = header["op"], (ident, header.get("id", 0))
        if op == "ping":
            self._send(ident, {"id": key[1], **self.status()})
        elif op == "cancel":
            task = self.tasks.get(key)
            if task is not None:
                task.cancel()
        elif op == "pixels":
            waiter = self.waiters.get(key)
            if waiter is not None and not waiter.done():
                try:
                    waiter.set_result(self._pixels(header, arrays))
                except Exception as exc:  # noqa: BLE001 - a bad ring or slot fails this request (op_reserve answers)
                    waiter.set_exception(exc)
        elif op == "embed" and "traceparent" not in header:
            self._embed_now(ident, key, header, arrays)
        else:
            task = asyncio.ensure_future(self._answer(ident, key[1], op, header, arrays))
            self.tasks[key] = task
            # a drain waits for the answer too, not only for the queue: a batch's items leave the queue before the
            # task that waits for them sends its answer (which a front-end draining at the same time waits for)
            self.lifecycle.inflight_requests += 1
            task.add_done_callback(lambda _: self._done(key))

    def _embed_now(self, ident: bytes, key: Key, header: dict[str, Any], arrays: list[np.ndarray]) -> None:
        """op_embed without a task or a coroutine (most calls: one image, untraced; a task and its coroutines were a
        quarter of the event loop's time per call): room and queue now, the answer from the items' futures' callback.
        A `cancel` cancels those futures, and the batcher drops their items, as when op_embed's task is cancelled."""
        try:
            futures = self._engine().images.queue_now(self._pixels(header, arrays), float(header["deadline"]))
        except Exception as exc:  # noqa: BLE001 - refused (503 / 413) or a bad call: answered as _answer does
            self._failed(ident, key[1], "embed", exc)
            return
        waiting = futures[0] if len(futures) == 1 else asyncio.gather(*futures)
        self.tasks[key] = waiting
        self.lifecycle.inflight_requests += 1
        waiting.add_done_callback(lambda done: self._embedded(ident, key, done, futures))

    def _embedded(self, ident: bytes, key: Key, done: asyncio.Future, futures: list[asyncio.Future]) -> None:
        self._done(key)
        if done.cancelled():  # the front-end's client left: nobody reads an answer
            return
        exc = done.exception()
        if exc is not None:
            for f in futures:  # a sibling failed: the request is answered, its other images are not computed
                f.cancel()
            self._failed(ident, key[1], "embed", exc)
            return
        out = done.result()
        self._send(ident, {"id": key[1]}, (rows(out if isinstance(out, list) else [out]),))

    def _failed(self, ident: bytes, rid: int, op: str, exc: BaseException) -> None:
        if not hasattr(exc, "status"):
            log.error("engine request %s failed", op, exc_info=exc)
        self._send(ident, {"id": rid, **error_fields(exc)})

    def _done(self, key: Key) -> None:
        self.tasks.pop(key, None)
        self.lifecycle.inflight_requests -= 1

    async def _answer(self, ident: bytes, rid: int, op: str, header: dict[str, Any], arrays: list) -> None:
        try:
            # current while the request runs here, so its spans (queue_wait, inference) join the front-end's trace
            with tracing.attached(tracing.context_from(header.get("traceparent"))):
                fields, out = await getattr(self, "op_" + op)(ident, rid, header, arrays)
            self._send(ident, {"id": rid, **fields}, out)
        except asyncio.CancelledError:  # the front-end's client left: nobody reads an answer
            raise
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the front-end that asked
            self._failed(ident, rid, op, exc)

    def _pixels(self, header: dict[str, Any], arrays: list[np.ndarray]) -> list[np.ndarray]:
        """A call's decoded images, uint8 [H, W, 3] each: views of the slots its header names in its front-end's
        shared-memory ring (service/pixel_ring.py), or of the uint8 [n, H, W, 3] frame it carries."""
        if "slots" not in header:
            return list(arrays[0])
        if self.rings is None:
            directory = socket_dir(self.address)
            if directory is None:
                raise InvalidField("shared-memory slots sent to an engine that is not on ipc://")
            h, w = self._engine().backend.preprocess.size
            self.rings = RingReader(directory, (h, w, 3))
        return self.rings.views(header["ring"], header["slots"])

    # --- state ----------------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        lc, eng = self.lifecycle, self.lifecycle.engine
        out: dict[str, Any] = {"ready": lc.is_ready(), "reason": lc.readiness_reason(), "load": self.load()}
        if eng is not None and lc.is_ready():
            out["info"] = engine_info(eng)
        return out

    def load(self) -> int:
        """Items queued or being encoded here, images and texts."""
        eng = self.lifecycle.engine
        return (eng.images.depth + eng.texts.depth) if eng else 0

    def _engine(self) -> Engine:
        return self.lifecycle.require_engine()

    # --- operations: each returns (header fields, arrays) ---------------------------------------------------
    async def op_reserve(self, ident: bytes, rid: int, h: dict, arrays: list) -> tuple[dict, tuple]:
        """Room for h["n"] images (503/413 at once otherwise); then wait for their pixels and embed them."""
        eng, loop = self._engine(), asyncio.get_running_loop()
        deadline = float(h["deadline"])
        key = (ident, rid)
        with eng.images.reserve(int(h["n"])) as room:
            waiter = self.waiters[key] = loop.create_future()
            try:
                self._send(ident, {"id": rid, "reserved": True})
                try:
                    pixels = await asyncio.wait_for(waiter, max(0.0, deadline - loop.time()) + PIXELS_GRACE_S)
                except asyncio.TimeoutError:
                    raise DeadlineExceeded(f"{h['n']} images were not decoded before the request's deadline",
                                           retry_after=1) from None
            finally:
                self.waiters.pop(key, None)
            if len(pixels) != room.n:
                raise InvalidField(f"{len(pixels)} images sent for room reserved for {room.n}")
            out = await room.submit(pixels, deadline)  # uint8 [H, W, 3] each
        return {}, (rows(out),)

    async def op_embed(self, ident: bytes, rid: int, h: dict, arrays: list) -> tuple[dict, tuple]:
        """Images decoded already (a uint8 [n, H, W, 3] frame, or slots of the front-end's ring): room for them now
        (503/413 otherwise), then embed them. A front-end sends this instead of reserve + pixels while it sees this
        queue at most half full."""
        eng, pixels = self._engine(), self._pixels(h, arrays)
        with eng.images.reserve(len(pixels)) as room:
            out = await room.submit(pixels, float(h["deadline"]))
        return {}, (rows(out),)

    async def op_texts(self, ident: bytes, rid: int, h: dict, arrays: list) -> tuple[dict, tuple]:
        eng = self._engine()
        texts, deadline = list(h["texts"]), float(h["deadline"])
        tokens = arrays[0] if arrays else None
        return {}, (await embed_tokens(eng, texts, tokens, deadline),)

    async def op_classifier(self, ident: bytes, rid: int, h: dict, arrays: list) -> tuple[dict, tuple]:
        eng = self._engine()
        proto = await eng.classifier(tuple(h["labels"]), tuple(h["templates"]), float(h["deadline"]))
        return {}, (proto,)

    async def op_count_tokens(self, ident: bytes, rid: int, h: dict, arrays: list) -> tuple[dict, tuple]:
        return {"n": await self._engine().count_tokens(list(h["texts"]))}, ()

    async def op_ls_put(self, ident: bytes, rid: int, h: dict, arrays: list) -> tuple[dict, tuple]:
        eng = self._engine()
        labelset = LabelSet(tuple(h["labels"]), tuple(h["templates"]))
        stored = await self.labelsets.put(
            h["name"], labelset, lambda: eng.classifier(labelset.labels, labelset.templates, float(h["deadline"])),
            eng.backend.fingerprint)
        return {"labelset": stored.info()}, ()

    async def op_ls_get(self, ident: bytes, rid: int, h: dict, arrays: list) -> tuple[dict, tuple]:
        return {"labelset": (await self.labelsets.get(h["name"])).info()}, ()

    async def op_ls_list(self, ident: bytes, rid: int, h: dict, arrays: list) -> tuple[dict, tuple]:
        return {"labelsets": [ls.info() for ls in await self.labelsets.list()]}, ()

    async def op_ls_delete(self, ident: bytes, rid: int, h: dict, arrays: list) -> tuple[dict, tuple]:
        await self.labelsets.delete(h["name"])
        return {}, ()

    async def close(self) -> None:
        for task in list(self.tasks.values()):
            task.cancel()
        if self.sock is not None:
            if self.outbox:
                self._flush()  # answers queued in this loop iteration still leave
            self.sock.close()
        self.ctx.term()


async def embed_tokens(eng: Engine, texts: list[str], tokens: Optional[np.ndarray], deadline: float) -> np.ndarray:
    """Engine.embed_texts for texts the front-end has tokenised already (int64 [N, L]); without tokens (a tokenizer
    the front-end cannot rebuild), the engine tokenises them itself."""
    if tokens is None:
        return await eng.embed_texts(texts, deadline)
    fp = eng.backend.fingerprint
    out: list[Optional[np.ndarray]] = [eng.text_cache.get((fp, t)) for t in texts]
    first: dict[str, int] = {}  # each missing text once, with its row of tokens
    for i, (t, e) in enumerate(zip(texts, out)):
        if e is None:
            first.setdefault(t, i)
    if first:
        loop = asyncio.get_running_loop()
        if loop.time() > deadline:
            raise eng._expire(len(first), f"{len(first)} texts were not encoded")
        with eng.texts.reserve(len(first)) as room:
            computed = await room.submit([tokens[i] for i in first.values()], deadline)
        for t, e in zip(first, computed):
            eng.text_cache.put((fp, t), e)
        lookup = dict(zip(first, computed))
        out = [e if e is not None else lookup[t] for t, e in zip(texts, out)]
    return np.stack(out)  # type: ignore[arg-type]


def rows(out: list[np.ndarray]) -> np.ndarray:
    """A request's embeddings [D] each -> [n, D]; one as a view (np.stack's checks cost more than a reply's packing)."""
    return out[0][None] if len(out) == 1 else np.stack(out)


def engine_info(eng: Engine) -> dict[str, Any]:
    """What a front-end needs to know of the model and the batchers (service/engine_client.py BackendInfo)."""
    b = eng.backend
    tok = getattr(b, "tokenizer", None)
    exact = exact_tokenizer(tok) if tok is not None else None
    return {"describe": b.describe(), "name": b.name, "device": b.device, "precision": b.precision,
            "model_id": b.model_id, "fingerprint": b.fingerprint, "embed_dim": b.embed_dim,
            "context_length": b.context_length, "logit_scale": float(b.logit_scale),
            "logit_bias": getattr(b, "logit_bias", None),  # None: softmax scores (CLIP); a number: sigmoid ones
            "preprocess": b.preprocess.to_dict(),
            "tokenizer": None if exact is None else {"bpe_path": str(exact.bpe_path),
                                                     "context_length": exact.context_length,
                                                     "clean_budget": exact.clean_budget},
            "image_max_batch": eng.images.max_batch, "text_max_batch": eng.texts.max_batch,
            "measured": {m: c.to_dict() for m, c in eng.curves.items()},  # the warm-up's batch curves, for /info
            # every other plain attribute, so that one read by Engine's shared steps (scores) reaches front-ends too
            "attributes": {k: v for k, v in vars(b).items() if isinstance(v, (bool, int, float, str))}}


def run_engine(settings_data: dict[str, Any], device: str, address: str, index: int,
               backend_factory: Callable[[Settings], Any]) -> None:
    """The engine process's entry point (multiprocessing, spawn): load the model for `device`, answer on `address`
    until SIGTERM, then finish the queued work (CLIP_DRAIN_S) and exit 0."""
    from service.supervisor import PARENT_DIED, as_child, drain_once, parent_gone, remove_temp_dir

    def stop_before_serving(signum: int, frame: Any) -> None:  # nothing to drain yet; the loop's handler comes next
        if parent_gone():
            remove_temp_dir(address)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop_before_serving)
    signal.signal(PARENT_DIED, drain_once)
    as_child()
    if device.startswith("cuda:"):  # this process sees only its own GPU, as "cuda"
        os.environ["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
        device = "cuda"
    from service.__main__ import configure_logging

    settings = Settings(**{**settings_data, "device": device, "devices": []})
    configure_logging(settings.log_level)
    logging.getLogger("service").info("engine %d on %s: pid %d, %s", index, device, os.getpid(), address)
    start_tracing(settings, index)
    asyncio.run(_engine_main(settings, address, backend_factory))
    tracing.shutdown()  # export the spans still buffered
    if parent_gone():
        log.warning("engine %d: the supervisor is gone (killed); removing its temp dir of sockets and metrics", index)
        remove_temp_dir(address)
    os._exit(0)  # skip the interpreter's teardown (torch unload), as service/__main__.py does


def start_tracing(settings: Settings, index: int) -> None:
    """Tracing as the front-ends have it (same settings and environment): this process exports its own spans,
    children of the request spans whose traceparent comes with each call. Exits 2 where it cannot start (the
    front-ends stop the same way, and the supervisor stops the server)."""
    try:
        tracing.setup(settings)
    except tracing.TracingUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        os._exit(2)
    log.info("engine %d tracing: %s", index, tracing.describe())


async def _engine_main(settings: Settings, address: str, backend_factory: Callable[[Settings], Any]) -> None:
    metrics = Metrics()
    lifecycle = Lifecycle(settings, metrics, backend_factory)
    server = EngineServer(settings, address, lifecycle)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    lifecycle.on_load_failure = lambda exc: os._exit(3)  # the supervisor sees the exit and stops the server
    lifecycle.on_loaded = install_pixel_encoder
    lifecycle.start()
    server.serve()
    await stop.wait()
    lifecycle.begin_drain()
    done = await lifecycle.drained(settings.drain_s)
    log.info("engine drain %s", "complete" if done else "timed out")
    await server.close()
    await lifecycle.stop()

