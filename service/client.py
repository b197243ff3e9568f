"""Python client for clip-serve (httpx), sync and async, with typed results.

    from service.client import Client
    with Client("http://127.0.0.1:8000") as clip:
        clip.classify("cat.jpg", ["a cat", "a dog"]).top          # -> ["a cat"]
        clip.embed_texts(["a red circle"]).vectors.shape           # -> (1, D)

`Client` and `AsyncClient` share one core that builds each request and parses each response; they differ only in
how they send. Both retry 503 (and 429) answers, waiting what `Retry-After` says (bounded by `max_retry_wait`),
up to `max_retries` times; other errors raise `ClipServeError` at once. This module imports no server code.
"""

from __future__ import annotations

import asyncio
import email.utils
import io
import os
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
    score: float  # softmax probability over the request's labels


@dataclass(frozen=True)
class Classification:
    """Per image, labels ranked best first."""

    model: str
    fingerprint: str
    results: list[list[LabelScore]]

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


class ClipServeError(Exception):
    """An error answer from the server: HTTP status, the error type and its message."""

    def __init__(self, status: int, type_: str, message: str, retry_after: Optional[float] = None):
        super().__init__(f"{status} {type_}: {message}")
        self.status, self.type, self.message, self.retry_after = status, type_, message, retry_after


# --- the shared core: requests and parsers ------------------------------------------------------------------
@dataclass
class Call(Generic[T]):
    """One HTTP request and how to read its answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    kwargs: dict[str, Any] = field(default_factory=dict)  # json= / files= / data= for httpx


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


def _files(images: Union[ImageInput, Sequence[ImageInput]]) -> list[tuple[str, tuple[str, bytes]]]:
    return [("file", image_bytes(im)) for im in _as_list(images)]


def _json(response: httpx.Response) -> Any:
    return response.json()


def _embeddings(response: httpx.Response) -> Embeddings:
    body = response.json()
    return Embeddings(body["model"], body["fingerprint"], np.asarray(body["embeddings"], dtype=np.float32))


def _classification(response: httpx.Response) -> Classification:
    body = response.json()
    return Classification(body["model"], body["fingerprint"],
                          [[LabelScore(x["label"], x["score"]) for x in ranked] for ranked in body["results"]])


def _labelset(response: httpx.Response) -> LabelSet:
    body = response.json()
    return LabelSet(body["name"], body["labels"], body["templates"], body["fingerprint"])


def _labelsets(response: httpx.Response) -> list[LabelSetSummary]:
    return [LabelSetSummary(x["name"], x["n_labels"], x["n_templates"]) for x in response.json()["labelsets"]]


def _info(response: httpx.Response) -> ModelInfo:
    b = response.json()
    return ModelInfo(b["model"], b["fingerprint"], b["dimensions"], b["backend"], b["device"], b["precision"],
                     bool(b.get("ready")), b)


def _nothing(response: httpx.Response) -> None:
    return None


class Requests:
    """Builds every call the clients make; no I/O besides reading image files."""

    def info(self) -> Call[ModelInfo]:
        return Call("GET", "/info", _info)

    def embed_images(self, images: Union[ImageInput, Sequence[ImageInput]]) -> Call[Embeddings]:
        return Call("POST", "/embed/image", _embeddings, {"files": _files(images)})

    def embed_texts(self, texts: Union[str, Sequence[str]]) -> Call[Embeddings]:
        return Call("POST", "/embed/text", _embeddings, {"json": {"texts": [texts] if isinstance(texts, str)
                                                                           else list(texts)}})

    def classify(self, images: Union[ImageInput, Sequence[ImageInput]], labels: Optional[Sequence[str]] = None, *,
                 labelset: Optional[str] = None, templates: Templates = None,
                 top_k: Optional[int] = None) -> Call[Classification]:
        data: dict[str, Any] = {}
        if labels is not None:
            data["labels"] = [labels] if isinstance(labels, str) else list(labels)
        if labelset is not None:
            data["labelset"] = labelset
        if templates is not None:  # one string: a built-in set name or a single template
            data["templates"] = templates if isinstance(templates, str) else list(templates)
        if top_k is not None:
            data["top_k"] = str(top_k)
        return Call("POST", "/classify", _classification, {"files": _files(images), "data": data})

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


class _Base:
    """What both clients hold: the request builder and the retry policy."""

    def __init__(self, max_retries: int, max_retry_wait: float, backoff: float):
        self.requests = Requests()
        self.max_retries, self.max_retry_wait, self.backoff = max_retries, max_retry_wait, backoff

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

    @staticmethod
    def _result(call: Call[T], response: httpx.Response) -> T:
        if response.status_code >= 400:
            raise error_from(response)
        return call.parse(response)


class Client(_Base):
    """Synchronous client. Use as a context manager, or call close()."""

    def __init__(self, base_url: str = DEFAULT_URL, *, api_key: Optional[str] = None, timeout: float = 60.0,
                 max_retries: int = 3, max_retry_wait: float = 30.0, backoff: float = 0.5,
                 transport: Optional[httpx.BaseTransport] = None):
        super().__init__(max_retries, max_retry_wait, backoff)
        self.http = httpx.Client(base_url=base_url, headers=self._headers(api_key), timeout=timeout,
                                 transport=transport)
        self.sleep: Callable[[float], None] = time.sleep

    def _run(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            response = self.http.request(call.method, call.path, **call.kwargs)
            delay = self._delay(response, attempt)
            if delay is None:
                return self._result(call, response)
            self.sleep(delay)
            attempt += 1

    def info(self) -> ModelInfo:
        return self._run(self.requests.info())

    def ready(self) -> bool:
        """True once the model is loaded and warmed up (GET /readyz); False while loading or unreachable."""
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def embed_images(self, images: Union[ImageInput, Sequence[ImageInput]]) -> Embeddings:
        """Image embeddings [N, D] of paths, bytes or PIL images (one or a list), in order."""
        return self._run(self.requests.embed_images(images))

    def embed_texts(self, texts: Union[str, Sequence[str]]) -> Embeddings:
        """Text embeddings [N, D], in order."""
        return self._run(self.requests.embed_texts(texts))

    def classify(self, images: Union[ImageInput, Sequence[ImageInput]], labels: Optional[Sequence[str]] = None, *,
                 labelset: Optional[str] = None, templates: Templates = None,
                 top_k: Optional[int] = None) -> Classification:
        """Zero-shot classification against `labels` or a stored `labelset`; templates: list or built-in name."""
        return self._run(self.requests.classify(images, labels, labelset=labelset, templates=templates,
                                                top_k=top_k))

    def put_labelset(self, name: str, labels: Sequence[str], templates: Templates = None) -> LabelSet:
        return self._run(self.requests.put_labelset(name, labels, templates))

    def get_labelset(self, name: str) -> LabelSet:
        return self._run(self.requests.get_labelset(name))

    def list_labelsets(self) -> list[LabelSetSummary]:
        return self._run(self.requests.list_labelsets())

    def delete_labelset(self, name: str) -> None:
        return self._run(self.requests.delete_labelset(name))

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """Asynchronous client, the same methods as `Client` as coroutines. Use `async with`, or await aclose()."""

    def __init__(self, base_url: str = DEFAULT_URL, *, api_key: Optional[str] = None, timeout: float = 60.0,
                 max_retries: int = 3, max_retry_wait: float = 30.0, backoff: float = 0.5,
                 transport: Optional[httpx.AsyncBaseTransport] = None):
        super().__init__(max_retries, max_retry_wait, backoff)
        self.http = httpx.AsyncClient(base_url=base_url, headers=self._headers(api_key), timeout=timeout,
                                      transport=transport)
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def _run(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            response = await self.http.request(call.method, call.path, **call.kwargs)
            delay = self._delay(response, attempt)
            if delay is None:
                return self._result(call, response)
            await self.sleep(delay)
            attempt += 1

    async def info(self) -> ModelInfo:
        return await self._run(self.requests.info())

    async def ready(self) -> bool:
        try:
            return (await self.http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    async def embed_images(self, images: Union[ImageInput, Sequence[ImageInput]]) -> Embeddings:
        return await self._run(self.requests.embed_images(images))

    async def embed_texts(self, texts: Union[str, Sequence[str]]) -> Embeddings:
        return await self._run(self.requests.embed_texts(texts))

    async def classify(self, images: Union[ImageInput, Sequence[ImageInput]],
                       labels: Optional[Sequence[str]] = None, *, labelset: Optional[str] = None,
                       templates: Templates = None, top_k: Optional[int] = None) -> Classification:
        return await self._run(self.requests.classify(images, labels, labelset=labelset, templates=templates,
                                                      top_k=top_k))

    async def put_labelset(self, name: str, labels: Sequence[str], templates: Templates = None) -> LabelSet:
        return await self._run(self.requests.put_labelset(name, labels, templates))

    async def get_labelset(self, name: str) -> LabelSet:
        return await self._run(self.requests.get_labelset(name))

    async def list_labelsets(self) -> list[LabelSetSummary]:
        return await self._run(self.requests.list_labelsets())

    async def delete_labelset(self, name: str) -> None:
        return await self._run(self.requests.delete_labelset(name))

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
