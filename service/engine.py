"""The inference engine behind the routes: preprocessing pool, batchers, caches, classifiers.

A route makes one call here with inputs already parsed and checked (service/inputs.py): embed_images, embed_texts,
embed_mixed (/v1), classify, or classifier (PUT /labelsets). Inside: text cache lookup -> preprocess in the worker
pool (room in the batcher's queue reserved first) -> batcher -> backend (inference thread) -> embeddings back.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Awaitable, Callable, Optional, Sequence, Union

import numpy as np

from models.prompts import prototypes
from models.zeroshot import ScoreKind, label_scores
from service import tracing
from service.backends import Backend
from service.batch_probe import BatchCurve
from service.batcher import Batcher
from service.cache import ByteLRU
from service.errors import ApiError, BadInput, DeadlineExceeded
from service.images import ImagePreprocessor
from service.metrics import Metrics
from service.settings import Settings
from service.templates import check_prompt_count, prompts_for, reachable_chars

MB = 1024 * 1024


def max_batch(settings: Settings, backend: Backend, modality: str, measured: Optional[int] = None) -> int:
    """CLIP_{IMAGE,TEXT}_MAX_BATCH when set; left unset, the cap measured at warm-up (service/batch_probe.py) when
    there is one, else the setting's default; always within the engine's own limit."""
    field = f"{modality}_max_batch"
    limit = getattr(settings, field)
    if field not in settings.model_fields_set and measured:
        limit = measured
    return min(limit, backend.max_batch or limit)


def unset_limits(settings: Settings, backend: Backend) -> dict[str, int]:
    """The towers whose max batch is left to measurement, with the largest batch a measurement may try."""
    if settings.batch_probe_s <= 0 or not backend.measure_batches:
        return {}
    return {m: max_batch(settings, backend, m) for m in ("image", "text") if f"{m}_max_batch" not in
            settings.model_fields_set}


class Engine:
    """Everything needed to turn inputs into embeddings and classifier scores for one loaded backend."""

    # A request's one image with at most this many pixels (its header says) is decoded on the event loop rather than
    # in the pool; 0 = never. The pool's hand-off (futures, a thread wake-up, the GIL back) costs about as much CPU as
    # decoding a small JPEG; a front-end process (RemoteEngine) sets it, one process keeps the pool for everything.
    inline_decode_pixels = 0

    def __init__(self, settings: Settings, backend: Backend, metrics: Metrics, inference_pool: ThreadPoolExecutor,
                 on_fatal: Optional[Callable[[BaseException], None]] = None,
                 curves: Optional[dict[str, BatchCurve]] = None):
        self.settings, self.backend, self.metrics = settings, backend, metrics
        self.curves = curves or {}  # measured at warm-up, per tower whose max batch was left unset
        workers = settings.preprocess_workers or max(2, os.cpu_count() or 2)
        self.preprocess_pool = ThreadPoolExecutor(workers, thread_name_prefix="preprocess")
        self.preprocessor = self._image_preprocessor()
        self._build_queues(inference_pool, on_fatal)

    def _image_preprocessor(self) -> ImagePreprocessor:
        """One image's decode + resize + normalise, as this engine's image batcher takes it."""
        metrics = self.metrics
        return ImagePreprocessor(
            self.backend.preprocess, self.settings.max_image_pixels, self.settings.reduced_jpeg_decode,
            self.settings.jpeg_decode, on_jpeg_fallback=lambda reason: metrics.jpeg_fallbacks.labels(reason).inc())

    def _build_queues(self, inference_pool: ThreadPoolExecutor,
                      on_fatal: Optional[Callable[[BaseException], None]]) -> None:
        """The batchers and caches: the part of an engine that a front-end process (RemoteEngine) leaves to the
        engine process. Everything else is built in __init__ for both."""
        settings, backend, metrics = self.settings, self.backend, self.metrics
        image_max, text_max = (max_batch(settings, backend, m, self.curves[m].cap if m in self.curves else None)
                               for m in ("image", "text"))
        common = dict(metrics=metrics, max_queue=settings.max_queue, on_fatal=on_fatal)
        self.images = Batcher("image", backend.encode_image, inference_pool, max_batch=image_max,
                              max_wait_s=settings.image_max_wait_ms / 1000, **common)
        self.texts = Batcher("text", backend.encode_text, inference_pool, max_batch=text_max,
                             max_wait_s=settings.text_max_wait_ms / 1000, **common)
        self.text_cache = ByteLRU("text", int(settings.text_cache_mb * MB), metrics)
        self.labelset_cache = ByteLRU("labelset", int(settings.labelset_cache_mb * MB), metrics)

    def start(self) -> None:
        self.images.start()
        self.texts.start()

    async def stop(self) -> None:
        await self.images.stop()
        await self.texts.stop()
        self.preprocess_pool.shutdown(wait=False, cancel_futures=True)

    def idle(self) -> bool:
        """Nothing reserved, queued or encoding in either batcher."""
        return self.images.depth == 0 and self.texts.depth == 0

    def activity(self) -> int:
        """Items ever admitted to either batcher: unchanged across a span means no request reached the encoders."""
        return self.images.taken + self.texts.taken

    def deadline(self) -> float:
        """Loop time by which a request's work must have started: CLIP_REQUEST_TIMEOUT_S from now. A request takes
        one deadline at its start and passes it to every step, so no step restarts the clock."""
        return asyncio.get_running_loop().time() + self.settings.request_timeout_s

    def _expire(self, n: int, what: str) -> DeadlineExceeded:
        """The 503 for a request past its deadline, counting its n items refused (as the batcher counts them)."""
        self.metrics.rejected.labels("deadline").inc(n)
        return DeadlineExceeded(f"{what} before the request's deadline (CLIP_REQUEST_TIMEOUT_S="
                                f"{self.settings.request_timeout_s:g}s); retry later, or send less per request",
                                retry_after=1)

    # --- images ---------------------------------------------------------------------------------------------
    def _decode(self, decode: Callable[[], np.ndarray], data: bytes, index: int, trace: Optional[object]) -> np.ndarray:
        """One image's decode, in its `decode` span (child of `trace`) and timed in clip_preprocess_seconds."""
        with tracing.span("decode", trace, {"clip.image.index": index, "clip.image.bytes": len(data)}):
            start = time.perf_counter()
            out = decode()
            self.metrics.preprocess.labels("image").observe(time.perf_counter() - start)
        return out

    def _preprocess_one(self, data: bytes, job: "_DecodeJob", index: int) -> np.ndarray:
        if not job.begin():  # the request is over (deadline, client gone, a sibling failed): skip the decode
            raise _Skipped()
        return self._decode(lambda: self.preprocessor(data), data, index, job.trace)

    def _decode_small(self, data: bytes, deadline: float) -> Optional[np.ndarray]:
        """One image decoded here, on the event loop, if its header says it is small (inline_decode_pixels); None
        for the pool to decode it. Errors, metrics and the decode span are as in the pool."""
        try:
            img = self.preprocessor.open(data)
        except ApiError as exc:
            raise _placed(exc, 0, 1)
        if img.width * img.height > self.inline_decode_pixels:
            return None
        if asyncio.get_running_loop().time() > deadline:
            raise self._expire(1, "1 of 1 images were not decoded")
        try:
            return self._decode(lambda: self.preprocessor.finish(img, data), data, 0, tracing.capture())
        except Exception as exc:  # noqa: BLE001 - placed as the pool's failures are
            raise _placed(exc, 0, 1)

    async def preprocess_images(self, images: list[bytes], deadline: Optional[float] = None) -> list[np.ndarray]:
        """Decode + resize + normalise every image in the worker pool (a front-end's one small image: on the event
        loop, `inline_decode_pixels`); a bad one names its index.

        Each decode starts only while its request still wants it: the request fails with 503 as soon as its
        deadline passes with images undecoded (those are never decoded), and a client that leaves, or a sibling
        that fails, stops the decodes not yet started (counted in clip_dropped_total when the client left).
        Decodes already running finish in the background: Pillow cannot be interrupted.
        """
        if not images:
            return []
        loop = asyncio.get_running_loop()
        deadline = self.deadline() if deadline is None else deadline
        if len(images) == 1 and self.inline_decode_pixels:
            pixels = self._decode_small(images[0], deadline)
            if pixels is not None:
                return [pixels]
        job = _DecodeJob(len(images), time.monotonic() + (deadline - loop.time()))
        futures = [loop.run_in_executor(self.preprocess_pool, self._preprocess_one, b, job, i)
                   for i, b in enumerate(images)]
        try:
            done, pending = await asyncio.wait(futures, timeout=max(0.0, deadline - loop.time()),
                                               return_when=asyncio.FIRST_EXCEPTION)
        except asyncio.CancelledError:  # the client left (or a sibling task failed): nobody wants the rest
            self.metrics.dropped.labels("image").inc(job.close())
            raise
        finally:
            job.close()
            for f in futures:
                f.cancel()
        errors = {i: f.exception() for i, f in enumerate(futures) if f in done and f.exception() is not None}
        bad = [i for i, exc in errors.items() if not isinstance(exc, _Skipped)]
        if bad:
            raise _placed(errors[bad[0]], bad[0], len(images))
        if pending or errors:  # timed out, or workers found the deadline passed before they began
            skipped = job.close()
            raise self._expire(skipped, f"{skipped} of {len(images)} images were not decoded")
        return [f.result() for f in futures]

    async def embed_images(self, images: list[bytes], deadline: Optional[float] = None) -> np.ndarray:
        """Image bytes -> L2-normalised embeddings [N, D], in order."""
        deadline = self.deadline() if deadline is None else deadline
        with self.images.reserve(len(images)) as room:  # a full queue answers 503 before any decoding
            pixels = await self.preprocess_images(images, deadline)
            return np.stack(await room.submit(pixels, deadline))

    # --- texts ----------------------------------------------------------------------------------------------
    def _tokenize(self, texts: list[str]) -> np.ndarray:
        start = time.perf_counter()
        tokens = self.backend.tokenize(texts)
        self.metrics.preprocess.labels("text").observe((time.perf_counter() - start) / max(1, len(texts)))
        return tokens

    async def embed_texts(self, texts: list[str], deadline: Optional[float] = None) -> np.ndarray:
        """Texts -> embeddings [N, D]; cached prompts skip the encoder, the misses go to it together."""
        fp = self.backend.fingerprint
        out: list[Optional[np.ndarray]] = [self.text_cache.get((fp, t)) for t in texts]
        missing = sorted({t for t, e in zip(texts, out) if e is None})
        if missing:
            computed = await self._encode_texts(missing, self.deadline() if deadline is None else deadline)
            for t, e in zip(missing, computed):
                self.text_cache.put((fp, t), e)
            lookup = dict(zip(missing, computed))
            out = [e if e is not None else lookup[t] for t, e in zip(texts, out)]
        return np.stack(out)  # type: ignore[arg-type]

    async def _encode_texts(self, texts: list[str], deadline: float) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        if loop.time() > deadline:  # not even tokenised: the batcher would refuse them anyway
            raise self._expire(len(texts), f"{len(texts)} texts were not encoded")
        with self.texts.reserve(len(texts)) as room:
            tokens = await loop.run_in_executor(self.preprocess_pool, self._tokenize, texts)
            return await room.submit(list(tokens), deadline)

    async def count_tokens(self, texts: list[str]) -> int:
        """Prompt tokens as the model sees them: non-padding ids, start/end included, truncated to the context."""
        if not texts:
            return 0
        tokens = await asyncio.get_running_loop().run_in_executor(self.preprocess_pool, self.backend.tokenize, texts)
        return int(np.count_nonzero(tokens))  # [B, context_length], 0 is padding

    # --- texts and images in one list (/v1/embeddings) ------------------------------------------------------
    async def embed_mixed(self, items: Sequence[Union[str, bytes]], field: str,
                          deadline: Optional[float] = None) -> "MixedEmbeddings":
        """Texts (str) and images (bytes) of one list, encoded concurrently, back in list order, with the texts'
        prompt tokens. An error from the image side is placed in the list, as `field`[i]: where an image is
        named, its position in `items`; where the list holds one image, that image, whatever went wrong."""
        deadline = self.deadline() if deadline is None else deadline
        image_pos = [i for i, x in enumerate(items) if isinstance(x, bytes)]
        text_pos = [i for i, x in enumerate(items) if not isinstance(x, bytes)]
        texts: list[str] = [items[i] for i in text_pos]  # type: ignore[misc]

        async def images_or_none() -> Optional[np.ndarray]:
            if not image_pos:
                return None
            try:
                return await self.embed_images([items[i] for i in image_pos], deadline)  # type: ignore[misc]
            except ApiError as exc:
                raise exc.at(field, _position(exc.index, image_pos))

        async def texts_or_none() -> Optional[np.ndarray]:
            return await self.embed_texts(texts, deadline) if texts else None

        text_emb, image_emb, tokens = await _all(texts_or_none(), images_or_none(), self.count_tokens(texts))
        out = np.empty((len(items), self.backend.embed_dim), dtype=np.float32)  # [N, D]
        if text_emb is not None:
            out[text_pos] = text_emb
        if image_emb is not None:
            out[image_pos] = image_emb
        return MixedEmbeddings(out, tokens)

    # --- classifiers ----------------------------------------------------------------------------------------
    async def classify(self, images: list[bytes], labels: tuple[str, ...], templates: tuple[str, ...],
                       deadline: Optional[float] = None, scores: ScoreKind = "probability") -> np.ndarray:
        """[N, C] scores of each image over the labels: the model's own label probabilities (softmax over the labels,
        or one sigmoid per label: the backend's `activation`), or the raw cosines (models/zeroshot.py). One deadline
        for the whole request: the label prompts first (usually cached), then the images."""
        deadline = self.deadline() if deadline is None else deadline
        proto = await self.classifier(labels, templates, deadline)
        return label_scores(await self.embed_images(images, deadline), proto, self.backend.activation, scores)

    async def classifier(self, labels: tuple[str, ...], templates: tuple[str, ...],
                         deadline: Optional[float] = None) -> np.ndarray:
        """[C, D] prototypes: per label, the mean of its normalised template embeddings, renormalised
        (models/prompts.py).

        Refused (413) above CLIP_MAX_PROMPTS before any prompt is built. Prompts are built and encoded about one
        encoder batch at a time, each cut to what can reach the model, so memory stays bounded whatever the
        labels; each step's embeddings enter the prompt cache at once, so a request stopped by its deadline
        (one deadline for all steps) leaves its work for a retry.
        """
        check_prompt_count(len(labels), len(templates), self.settings.max_prompts)
        key = (self.backend.fingerprint, labels, templates)
        cached = self.labelset_cache.get(key)
        if cached is not None:
            return cached
        deadline = self.deadline() if deadline is None else deadline
        limit = reachable_chars(self.backend.context_length)
        step = max(1, self.texts.max_batch // len(templates))  # labels per step
        proto = np.empty((len(labels), self.backend.embed_dim), dtype=np.float32)  # [C, D]
        for i in range(0, len(labels), step):
            part = labels[i:i + step]
            emb = await self.embed_texts(prompts_for(part, templates, limit), deadline)  # [c*T, D]
            proto[i:i + len(part)] = prototypes(emb, len(part))
        self.labelset_cache.put(key, proto)
        return proto


class _Skipped(Exception):
    """A decode not started because its request no longer wants it."""


class _DecodeJob:
    """One request's decodes: a worker starts one only while the request is open and its deadline not passed."""

    def __init__(self, n: int, deadline: float):
        self.n, self.deadline = n, deadline  # deadline in time.monotonic() terms (workers have no event loop)
        self.trace = tracing.capture()  # the request's context, for decode spans in the workers (None: tracing off)
        self.started = 0
        self._open = True
        self._lock = threading.Lock()

    def begin(self) -> bool:
        with self._lock:
            if not self._open or time.monotonic() > self.deadline:
                return False
            self.started += 1
            return True

    def close(self) -> int:
        """Stop further decodes; returns how many never started. Idempotent."""
        with self._lock:
            self._open = False
            return self.n - self.started


def _placed(exc: BaseException, index: int, n: int) -> ApiError:
    """An image's failure, placed: its index when the request had several (one image needs no naming), and always
    for a failure the preprocessor did not foresee."""
    if isinstance(exc, ApiError):
        return exc.at("images", index if n > 1 else None)
    return BadInput(f"could not be decoded ({type(exc).__name__}: {exc})").at("images", index)


def _position(index: Optional[int], positions: list[int]) -> Optional[int]:
    """Where item `index` of a sub-list sits in the whole list. An error naming no item is about the only item of a
    one-item sub-list, and about none in particular of a longer one."""
    if index is not None:
        return positions[index]
    return positions[0] if len(positions) == 1 else None


async def _all(*aws: Awaitable) -> list:
    """Like gather, but a failure cancels the siblings, so their queued items are dropped."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()


@dataclass(frozen=True)
class MixedEmbeddings:
    vectors: np.ndarray  # [N, D] float32, in the order of the items
    prompt_tokens: int  # of the texts, as the model sees them (OpenAI's usage)
