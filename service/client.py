"""Python client for clip-serve (httpx), sync and async, with typed results.

    from service.client import Client
    with Client("http://127.0.0.1:8000") as clip:
        clip.classify("cat.jpg", ["a cat", "a dog"]).top          # -> ["a cat"]
        clip.embed_texts(["a red circle"]).vectors.shape           # -> (1, D)

`Client` and `AsyncClient` share one core that builds each request and parses each response; they differ only in
how they send. Both retry 503 (and 429) answers, waiting what `Retry-After` says (bounded by `max_retry_wait`),
up to `max_retries` times; other errors raise `ClipServeError` at once. This module imports no server code.

Given several base URLs, a client fails over: each call goes to a ready server (round robin), and a server that
refuses connections, drops them or answers 503/429 is skipped for a cool-down, then probed with GET /readyz
before it gets calls again. Every answer's fingerprint must match the first one (`FingerprintMismatch`
otherwise), so vectors from servers with different models never mix.
"""

from __future__ import annotations

import asyncio
import email.utils
import io
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Generic, Optional, Sequence, TypeVar, Union
from urllib.parse import quote

import httpx
import numpy as np

T = TypeVar("T")
ImageInput = Union[str, os.PathLike, bytes, bytearray, "PIL.Image.Image"]  # noqa: F821 - PIL is optional
Templates = Union[str, Sequence[str], None]
DEFAULT_URL = "http://127.0.0.1:8000"
RETRY_STATUSES = (429, 503)
# Failures that say "this server, not this request": try another server. Not UnsupportedProtocol or local protocol
# errors (a mistyped URL or a bug here must surface, not be skipped). Every call is idempotent, so one that may have
# reached a server that then died is safe to send again (a repeated DELETE can answer 404).
FAILOVER_ERRORS = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)


# --- typed results ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Embeddings:
    """L2-normalised embeddings in request order; never mix vectors with different fingerprints."""

    model: str
    fingerprint: str
    vectors: np.ndarray  # float32 [N, D]

    @property
    def dimensions(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.vectors)


@dataclass(frozen=True)
class LabelScore:
    label: str
    score: float  # the label's probability under the model's activation, or its cosine (scores="cosine")


@dataclass(frozen=True)
class Classification:
    """Per image, labels ranked best first."""

    model: str
    fingerprint: str
    results: list[list[LabelScore]]
    # "softmax" (CLIP: an image's probabilities sum to 1) or "sigmoid" (SigLIP: each label on its own, multi-label)
    activation: str = "softmax"
    scores: str = "probability"  # what LabelScore.score is: "probability" or "cosine"

    @property
    def top(self) -> list[str]:
        """The best label of each image."""
        return [ranked[0].label for ranked in self.results]


@dataclass(frozen=True)
class LabelSet:
    name: str
    labels: list[str]
    templates: list[str]
    fingerprint: str


@dataclass(frozen=True)
class LabelSetSummary:
    name: str
    n_labels: int
    n_templates: int


@dataclass(frozen=True)
class ModelInfo:
    model: str
    fingerprint: str
    dimensions: int
    backend: str
    device: str
    precision: str
    ready: bool
    raw: dict[str, Any] = field(repr=False)  # everything /info said (batching, limits, preprocessing, ...)
    activation: str = "softmax"  # how /classify scores: "softmax" or "sigmoid" (raw["logit_bias"] then set)


class ClipServeError(Exception):
    """An error answer from the server: HTTP status, the error type and its message."""

    def __init__(self, status: int, type_: str, message: str, retry_after: Optional[float] = None):
        super().__init__(f"{status} {type_}: {message}")
        self.status, self.type, self.message, self.retry_after = status, type_, message, retry_after


class FingerprintMismatch(Exception):
    """A server answered with another model fingerprint than the client expects: its vectors are not comparable."""

    def __init__(self, url: str, expected: str, got: str, model: str):
        super().__init__(
            f"{url} serves fingerprint {got} (model {model}), but this client expects fingerprint {expected}: "
            f"embeddings of different fingerprints are not comparable. Serve the same model and weights on every "
            f"server, or use one client (and one output) per model.")
        self.url, self.expected, self.got, self.model = url, expected, got, model


# --- the shared core: requests and parsers ------------------------------------------------------------------
@dataclass
class Call(Generic[T]):
    """One HTTP request and how to read its answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    kwargs: dict[str, Any] = field(default_factory=dict)  # json= / content= + headers= for httpx


def image_bytes(image: ImageInput) -> tuple[str, bytes]:
    """(file name, encoded bytes) of a path, raw bytes or a PIL image (sent as PNG)."""
    if isinstance(image, (bytes, bytearray)):
        return "image", bytes(image)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        return path.name, path.read_bytes()
    if hasattr(image, "save") and hasattr(image, "mode"):  # a PIL image, without importing PIL here
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return "image.png", buf.getvalue()
    raise TypeError(f"images must be paths, bytes or PIL images, not {type(image).__name__}")


def _as_list(images: Union[ImageInput, Sequence[ImageInput]]) -> list[ImageInput]:
    if isinstance(images, (str, os.PathLike, bytes, bytearray)) or hasattr(images, "save"):
        return [images]  # type: ignore[list-item]
    return list(images)  # type: ignore[arg-type]


def _quote(name: str) -> str:
    """A form-data parameter value: the characters that would end or break the header, percent-encoded (HTML)."""
    return name.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def multipart(images: Union[ImageInput, Sequence[ImageInput]],
              fields: Optional[dict[str, Union[str, list[str]]]] = None) -> dict[str, Any]:
    """httpx keyword arguments for a multipart/form-data body of `file` parts (and text fields), built as one bytes
    object: httpx's own encoder writes each part to the socket separately (two sends per image), which cost
    more client CPU than the server's decoding of a small image when embedding a collection."""
    boundary = os.urandom(16).hex()
    out = bytearray()
    for name, values in (fields or {}).items():
        for value in [values] if isinstance(values, str) else values:
            out += (f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"\r\n\r\n'
                    f"{value}\r\n").encode()
    for image in _as_list(images):
        filename, data = image_bytes(image)
        out += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{_quote(filename)}"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n").encode()
        out += data
        out += b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return {"content": bytes(out), "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"}}


def _json(response: httpx.Response) -> Any:
    return response.json()


def _embeddings(response: httpx.Response) -> Embeddings:
    body = response.json()
    return Embeddings(body["model"], body["fingerprint"], np.asarray(body["embeddings"], dtype=np.float32))


def _classification(response: httpx.Response) -> Classification:
    body = response.json()
    return Classification(body["model"], body["fingerprint"],
                          [[LabelScore(x["label"], x["score"]) for x in ranked] for ranked in body["results"]],
                          body.get("activation", "softmax"), body.get("scores", "probability"))


def _labelset(response: httpx.Response) -> LabelSet:
    body = response.json()
    return LabelSet(body["name"], body["labels"], body["templates"], body["fingerprint"])


def _labelsets(response: httpx.Response) -> list[LabelSetSummary]:
    return [LabelSetSummary(x["name"], x["n_labels"], x["n_templates"]) for x in response.json()["labelsets"]]


def _info(response: httpx.Response) -> ModelInfo:
    b = response.json()
    return ModelInfo(b["model"], b["fingerprint"], b["dimensions"], b["backend"], b["device"], b["precision"],
                     bool(b.get("ready")), b, b.get("activation", "softmax"))


def _nothing(response: httpx.Response) -> None:
    return None


class Requests:
    """Builds every call the clients make; no I/O besides reading image files."""

    def info(self) -> Call[ModelInfo]:
        return Call("GET", "/info", _info)

    def embed_images(self, images: Union[ImageInput, Sequence[ImageInput]]) -> Call[Embeddings]:
        return Call("POST", "/embed/image", _embeddings, multipart(images))

    def embed_image_urls(self, urls: Sequence[str]) -> Call[Embeddings]:
        """https URLs the server fetches itself (it needs CLIP_ALLOW_URLS and the host on its allow-list)."""
        return Call("POST", "/embed/image", _embeddings, {"json": {"images": list(urls)}})

    def embed_texts(self, texts: Union[str, Sequence[str]]) -> Call[Embeddings]:
        return Call("POST", "/embed/text", _embeddings, {"json": {"texts": [texts] if isinstance(texts, str)
                                                                           else list(texts)}})

    def classify(self, images: Union[ImageInput, Sequence[ImageInput]], labels: Optional[Sequence[str]] = None, *,
                 labelset: Optional[str] = None, templates: Templates = None,
                 top_k: Optional[int] = None, scores: Optional[str] = None) -> Call[Classification]:
        data: dict[str, Any] = {}
        if labels is not None:
            data["labels"] = [labels] if isinstance(labels, str) else list(labels)
        if labelset is not None:
            data["labelset"] = labelset
        if templates is not None:  # one string: a built-in set name or a single template
            data["templates"] = templates if isinstance(templates, str) else list(templates)
        if top_k is not None:
            data["top_k"] = str(top_k)
        if scores is not None:  # "probability" (the server's default) or "cosine"
            data["scores"] = scores
        return Call("POST", "/classify", _classification, multipart(images, data))

    def put_labelset(self, name: str, labels: Sequence[str], templates: Templates = None) -> Call[LabelSet]:
        body: dict[str, Any] = {"labels": list(labels)}
        if templates is not None:
            body["templates"] = templates if isinstance(templates, str) else list(templates)
        return Call("PUT", f"/labelsets/{quote(name, safe='')}", _labelset, {"json": body})

    def get_labelset(self, name: str) -> Call[LabelSet]:
        return Call("GET", f"/labelsets/{quote(name, safe='')}", _labelset)

    def list_labelsets(self) -> Call[list[LabelSetSummary]]:
        return Call("GET", "/labelsets", _labelsets)

    def delete_labelset(self, name: str) -> Call[None]:
        return Call("DELETE", f"/labelsets/{quote(name, safe='')}", _nothing)


def retry_after_seconds(response: httpx.Response) -> Optional[float]:
    """Retry-After as seconds: a number, or an HTTP date (RFC 9110); None when absent or unreadable."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_from(response: httpx.Response) -> ClipServeError:
    try:
        err = response.json()["error"]
        type_, message = err.get("type") or err.get("code") or "error", err.get("message", "")
    except (ValueError, KeyError, TypeError, AttributeError):
        type_, message = "http_error", response.text[:500]
    return ClipServeError(response.status_code, type_, message, retry_after_seconds(response))


@dataclass
class Endpoint:
    """One server a client sends to, and its health as the client has seen it."""

    url: str
    http: Any  # httpx.Client or httpx.AsyncClient with base_url=url
    failures: int = 0  # consecutive failures; 0 = healthy
    down_until: float = 0.0  # time.monotonic() when its cool-down ends


class Endpoints:
    """Which server to try next: in turn, those not cooling down (one whose cool-down just ended is probed with
    /readyz first), then, as a last resort, those still cooling down, soonest first (so a call never fails only
    because every server was marked down a moment ago). One server is always simply tried, as before failover."""

    def __init__(self, endpoints: list[Endpoint], cooldown: float, max_cooldown: float,
                 clock: Callable[[], float] = time.monotonic):
        if not endpoints:
            raise ValueError("give at least one base URL")
        self.all, self.cooldown, self.max_cooldown, self.clock = endpoints, cooldown, max_cooldown, clock
        self._turn = 0

    def plan(self) -> list[tuple[Endpoint, bool]]:
        """Endpoints in the order to try them, each with whether it must pass a /readyz probe first."""
        if len(self.all) == 1:
            return [(self.all[0], False)]
        turn, self._turn = self._turn, (self._turn + 1) % len(self.all)
        rotated, now = self.all[turn:] + self.all[:turn], self.clock()
        usable = [(e, e.failures > 0) for e in rotated if e.down_until <= now]
        cooling = sorted((e for e in rotated if e.down_until > now), key=lambda e: e.down_until)
        return usable + [(e, False) for e in cooling]

    def failed(self, endpoint: Endpoint, retry_after: Optional[float]) -> None:
        """Cool down for what the server asked (Retry-After), else exponentially longer per consecutive failure."""
        endpoint.failures += 1
        wait = retry_after if retry_after is not None else self.cooldown * 2 ** (endpoint.failures - 1)
        endpoint.down_until = self.clock() + min(wait, self.max_cooldown)

    @staticmethod
    def succeeded(endpoint: Endpoint) -> None:
        endpoint.failures, endpoint.down_until = 0, 0.0


@dataclass
class Round:
    """What one pass over the servers got: an answer to use, or the best 503/429 to wait on, or the last error."""

    response: Optional[httpx.Response] = None  # a final answer (any status but 503/429)
    url: str = ""  # the server that gave it
    busy: Optional[httpx.Response] = None  # the 503/429 with the shortest Retry-After
    error: Optional[Exception] = None  # the last transport error

    def note_busy(self, response: httpx.Response) -> None:
        wait = retry_after_seconds(response)
        best = retry_after_seconds(self.busy) if self.busy is not None else None
        if self.busy is None or (wait is not None and (best is None or wait < best)):
            self.busy = response


def _base_urls(base_url: Union[str, Sequence[str]]) -> list[str]:
    urls = [base_url] if isinstance(base_url, str) else list(base_url)
    if not urls or not all(isinstance(u, str) and u for u in urls):
        raise ValueError(f"base_url must be a URL or a list of URLs, got {base_url!r}")
    return urls


class _Base:
    """What both clients hold: the request builder, the retry policy, the servers and the fingerprint check."""

    def __init__(self, max_retries: int, max_retry_wait: float, backoff: float, fingerprint: Optional[str]):
        self.requests = Requests()
        self.max_retries, self.max_retry_wait, self.backoff = max_retries, max_retry_wait, backoff
        # the fingerprint every answer must carry: given, or (with several servers) the first answer's; None with
        # one server and none given means unchecked, as before. Settable, e.g. to the fingerprint of stored vectors.
        self.fingerprint = fingerprint
        self._pin_first = False
        self._lock = threading.Lock()  # check-and-set of the pinned fingerprint from several threads (Client)
        self.endpoints: Endpoints

    def _setup(self, urls: list[str], make_http: Callable[[str], Any], cooldown: float, max_cooldown: float) -> None:
        self.endpoints = Endpoints([Endpoint(u, make_http(u)) for u in urls], cooldown, max_cooldown)
        self._pin_first = len(urls) > 1
        self.http = self.endpoints.all[0].http  # the first server's httpx client, as the one-URL client had

    @staticmethod
    def _headers(api_key: Optional[str]) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _delay(self, response: httpx.Response, attempt: int) -> Optional[float]:
        """Seconds to wait before retrying, or None when this answer is final."""
        if response.status_code not in RETRY_STATUSES or attempt >= self.max_retries:
            return None
        hinted = retry_after_seconds(response)
        wait = hinted if hinted is not None else self.backoff * 2 ** attempt
        return min(wait, self.max_retry_wait)

    def _busy(self, rnd: Round, endpoint: Endpoint, response: httpx.Response) -> bool:
        """A 503/429 (to a call, or to the /readyz probe of a server whose cool-down ended) cools that server down
        again; any other answer to a probe is no reason to skip the server: the call itself will tell."""
        if response.status_code not in RETRY_STATUSES:
            return False
        self.endpoints.failed(endpoint, retry_after_seconds(response))
        rnd.note_busy(response)
        return True

    def _answered(self, rnd: Round, endpoint: Endpoint, response: httpx.Response) -> bool:
        """Record one server's answer; True when it is final (anything but 503/429)."""
        if self._busy(rnd, endpoint, response):
            return False
        self.endpoints.succeeded(endpoint)
        rnd.response, rnd.url = response, endpoint.url
        return True

    def _unreachable(self, rnd: Round, endpoint: Endpoint, exc: Exception) -> None:
        if len(self.endpoints.all) == 1:
            raise exc  # one server: its transport errors surface at once, as they always did
        self.endpoints.failed(endpoint, None)
        rnd.error = exc

    def _next_step(self, call: Call[T], rnd: Round, attempt: int) -> tuple[Optional[T], Optional[float]]:
        """After a round: (result, None) when done, (None, delay) to wait and go round again; raises otherwise."""
        if rnd.response is not None:
            return self._result(call, rnd.response, rnd.url), None
        if rnd.busy is None:
            raise rnd.error if rnd.error is not None else RuntimeError("no server was tried")
        delay = self._delay(rnd.busy, attempt)
        if delay is None:
            raise error_from(rnd.busy)
        return None, delay

    def _result(self, call: Call[T], response: httpx.Response, url: str) -> T:
        if response.status_code >= 400:
            raise error_from(response)
        result = call.parse(response)
        got = getattr(result, "fingerprint", None)
        if got is not None:
            self._check_fingerprint(url, got, getattr(result, "model", "?"))
        return result

    def _check_fingerprint(self, url: str, got: str, model: str) -> None:
        with self._lock:
            if self.fingerprint is None and self._pin_first:
                self.fingerprint = got
            if self.fingerprint is not None and got != self.fingerprint:
                raise FingerprintMismatch(url, self.fingerprint, got, model)


class Client(_Base):
    """Synchronous client. Use as a context manager, or call close().

    `base_url` is one URL or a list of them (failover, see the module docstring). `fingerprint`: the model
    fingerprint every answer must carry (`FingerprintMismatch` otherwise); with several URLs, by default the
    first answer's. `cooldown` / `max_cooldown`: seconds a failed server is skipped (doubling per consecutive
    failure, or what its Retry-After says, capped)."""

    def __init__(self, base_url: Union[str, Sequence[str]] = DEFAULT_URL, *, api_key: Optional[str] = None,
                 timeout: float = 60.0, max_retries: int = 3, max_retry_wait: float = 30.0, backoff: float = 0.5,
                 transport: Optional[httpx.BaseTransport] = None, fingerprint: Optional[str] = None,
                 cooldown: float = 1.0, max_cooldown: float = 30.0):
        super().__init__(max_retries, max_retry_wait, backoff, fingerprint)
        self._setup(_base_urls(base_url), lambda url: httpx.Client(base_url=url, headers=self._headers(api_key),
                                                                    timeout=timeout, transport=transport),
                    cooldown, max_cooldown)
        self.sleep: Callable[[float], None] = time.sleep

    def _run(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            result, delay = self._next_step(call, self._round(call), attempt)
            if delay is None:
                return result  # type: ignore[return-value]
            self.sleep(delay)
            attempt += 1

    def _round(self, call: Call[T]) -> Round:
        rnd = Round()
        for endpoint, probe in self.endpoints.plan():
            try:
                if probe and self._busy(rnd, endpoint, endpoint.http.get("/readyz")):
                    continue
                if self._answered(rnd, endpoint, endpoint.http.request(call.method, call.path, **call.kwargs)):
                    break
            except FAILOVER_ERRORS as exc:
                self._unreachable(rnd, endpoint, exc)
        return rnd

    def info(self) -> ModelInfo:
        return self._run(self.requests.info())

    def ready(self) -> bool:
        """True once a server is loaded and warmed up (GET /readyz); False while loading or unreachable."""
        for endpoint in self.endpoints.all:
            try:
                if endpoint.http.get("/readyz").status_code == 200:
                    return True
            except httpx.TransportError:
                pass
        return False

    def embed_images(self, images: Union[ImageInput, Sequence[ImageInput]]) -> Embeddings:
        """Image embeddings [N, D] of paths, bytes or PIL images (one or a list), in order."""
        return self._run(self.requests.embed_images(images))

    def embed_image_urls(self, urls: Sequence[str]) -> Embeddings:
        """Embeddings of https images the server downloads (needs CLIP_ALLOW_URLS on the server), in order."""
        return self._run(self.requests.embed_image_urls(urls))

    def embed_texts(self, texts: Union[str, Sequence[str]]) -> Embeddings:
        """Text embeddings [N, D], in order."""
        return self._run(self.requests.embed_texts(texts))

    def classify(self, images: Union[ImageInput, Sequence[ImageInput]], labels: Optional[Sequence[str]] = None, *,
                 labelset: Optional[str] = None, templates: Templates = None,
                 top_k: Optional[int] = None, scores: Optional[str] = None) -> Classification:
        """Zero-shot classification against `labels` or a stored `labelset`; templates: list or built-in name;
        scores: "probability" (the model's activation, the default) or "cosine" (raw cosine similarities)."""
        return self._run(self.requests.classify(images, labels, labelset=labelset, templates=templates,
                                                top_k=top_k, scores=scores))

    def put_labelset(self, name: str, labels: Sequence[str], templates: Templates = None) -> LabelSet:
        return self._run(self.requests.put_labelset(name, labels, templates))

    def get_labelset(self, name: str) -> LabelSet:
        return self._run(self.requests.get_labelset(name))

    def list_labelsets(self) -> list[LabelSetSummary]:
        return self._run(self.requests.list_labelsets())

    def delete_labelset(self, name: str) -> None:
        return self._run(self.requests.delete_labelset(name))

    def close(self) -> None:
        for endpoint in self.endpoints.all:
            endpoint.http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """Asynchronous client, the same methods and arguments as `Client` as coroutines, plus `limits` (httpx's
    connection pool, per server). Use `async with`, or await aclose()."""

    def __init__(self, base_url: Union[str, Sequence[str]] = DEFAULT_URL, *, api_key: Optional[str] = None,
                 timeout: float = 60.0, max_retries: int = 3, max_retry_wait: float = 30.0, backoff: float = 0.5,
                 transport: Optional[httpx.AsyncBaseTransport] = None, fingerprint: Optional[str] = None,
                 cooldown: float = 1.0, max_cooldown: float = 30.0, limits: Optional[httpx.Limits] = None):
        super().__init__(max_retries, max_retry_wait, backoff, fingerprint)
        extra = {"limits": limits} if limits is not None else {}
        self._setup(_base_urls(base_url), lambda url: httpx.AsyncClient(
            base_url=url, headers=self._headers(api_key), timeout=timeout, transport=transport, **extra),
            cooldown, max_cooldown)
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def _run(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            result, delay = self._next_step(call, await self._round(call), attempt)
            if delay is None:
                return result  # type: ignore[return-value]
            await self.sleep(delay)
            attempt += 1

    async def _round(self, call: Call[T]) -> Round:
        rnd = Round()
        for endpoint, probe in self.endpoints.plan():
            try:
                if probe and self._busy(rnd, endpoint, await endpoint.http.get("/readyz")):
                    continue
                if self._answered(rnd, endpoint, await endpoint.http.request(call.method, call.path,
                                                                             **call.kwargs)):
                    break
            except FAILOVER_ERRORS as exc:
                self._unreachable(rnd, endpoint, exc)
        return rnd

    async def info(self) -> ModelInfo:
        return await self._run(self.requests.info())

    async def ready(self) -> bool:
        for endpoint in self.endpoints.all:
            try:
                if (await endpoint.http.get("/readyz")).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
        return False

    async def embed_images(self, images: Union[ImageInput, Sequence[ImageInput]]) -> Embeddings:
        return await self._run(self.requests.embed_images(images))

    async def embed_image_urls(self, urls: Sequence[str]) -> Embeddings:
        return await self._run(self.requests.embed_image_urls(urls))

    async def embed_texts(self, texts: Union[str, Sequence[str]]) -> Embeddings:
        return await self._run(self.requests.embed_texts(texts))

    async def classify(self, images: Union[ImageInput, Sequence[ImageInput]],
                       labels: Optional[Sequence[str]] = None, *, labelset: Optional[str] = None,
                       templates: Templates = None, top_k: Optional[int] = None,
                       scores: Optional[str] = None) -> Classification:
        return await self._run(self.requests.classify(images, labels, labelset=labelset, templates=templates,
                                                      top_k=top_k, scores=scores))

    async def put_labelset(self, name: str, labels: Sequence[str], templates: Templates = None) -> LabelSet:
        return await self._run(self.requests.put_labelset(name, labels, templates))

    async def get_labelset(self, name: str) -> LabelSet:
        return await self._run(self.requests.get_labelset(name))

    async def list_labelsets(self) -> list[LabelSetSummary]:
        return await self._run(self.requests.list_labelsets())

    async def delete_labelset(self, name: str) -> None:
        return await self._run(self.requests.delete_labelset(name))

    async def aclose(self) -> None:
        for endpoint in self.endpoints.all:
            await endpoint.http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
