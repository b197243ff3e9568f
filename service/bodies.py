"""Request bodies -> Python values: JSON and multipart parsed and validated (large ones off the event loop), image
strings (base64, data: URIs, https URLs) turned into bytes. An error about one image string names its place
(`field`, index) as data; service/errors.py writes it into the message."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from dataclasses import dataclass, field as dataclass_field
from typing import Any, Callable, Optional, Sequence, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request

from service.errors import ApiError, BadInput, InvalidField, PayloadTooLarge, UnsupportedMedia
from service.urls import ByteBudget

_DATA_URI_HEAD = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?((?:;[\w-]+=[^;,]*)*)(;base64)?$", re.I)
_ASCII_SPACE = b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"  # what str.isspace() (and re's \s) accepts in ASCII
_SURROGATE = re.compile("[\ud800-\udfff]")
# how a lone surrogate can hide in UTF-8 JSON: a \ud800-\udfff escape, or its 3 raw bytes (json.loads decodes bytes
# with "surrogatepass")
_SURROGATE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
# Bodies above this are parsed (and their base64 decoded) in a thread, not on the event loop. Measured on 2 cores, a
# 19 MB body stalled every other request (GET /healthz) on the loop by 229 ms (base64 images) and 136 ms (3.9 million
# short strings); in a thread by 44 and 74 ms, the longest single call that holds the GIL (json.loads). Parsing
# below this size takes well under a millisecond: not worth a thread hop.
OFF_LOOP_BYTES = 64 * 1024
_URL_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # scheme: (base64 never holds ':'; data: is handled first)
T = TypeVar("T")
URLS_OFF = ("image URLs are off on this server; send the image bytes as base64, or ask the operator to set "
            "CLIP_ALLOW_URLS=true with CLIP_URL_ALLOWED_HOSTS")


def is_url(s: str) -> bool:
    """Strings that start with a URL scheme (other than data:) rather than carry an image."""
    s = s.lstrip()
    return s[:5].lower() != "data:" and bool(_URL_LIKE.match(s))


def is_path(s: str) -> bool:
    """Recognisably a local path. Not a leading '/' alone: base64 of a JPEG starts with '/9j/'. Paths are never
    opened either way; one that looks like base64 just fails to decode as an image."""
    return s.lstrip().startswith(("\\", "~", "./", "../"))


def decode_image_string(s: str) -> bytes:
    """base64 or data: URI -> bytes. Non-image data URIs are 415; bad base64 is 400."""
    s = s.strip()
    if s[:5].lower() == "data:":  # a URI's scheme is case-insensitive (RFC 3986), as is_url and /v1's is_image read it
        head, comma, s = s.partition(",")  # the regex sees the short head only, never a 20 MB payload
        m = _DATA_URI_HEAD.match(head)
        if not m or not comma:
            raise BadInput("malformed data URI")
        mime, is_b64 = (m.group(1) or "text/plain").lower(), bool(m.group(3))
        if not mime.startswith("image/"):
            raise UnsupportedMedia(f"data URI of type {mime!r} is not an image")
        if not is_b64:
            raise BadInput("data URI must be base64-encoded")
    if is_path(s):
        raise BadInput("local paths are never read; send the image bytes as base64")
    if is_url(s):
        raise BadInput(URLS_OFF)
    return _b64decode(s)


def _b64decode(s: str) -> bytes:
    """Standard or URL-safe base64, padding optional, whitespace (MIME line breaks) ignored. bytes.translate
    drops ASCII whitespace 12x faster than re.sub (12 vs 143 ms for 20 MB); other whitespace takes the slow way."""
    try:
        raw = s.encode("ascii").translate(None, _ASCII_SPACE)
    except UnicodeEncodeError:
        raw = re.sub(r"\s+", "", s).encode("utf-8", "surrogatepass")
    if not raw:
        raise BadInput("not valid base64")
    try:  # validate=True refuses any character outside the alphabet (after altchars are mapped to it)
        altchars = b"-_" if (b"-" in raw or b"_" in raw) else None
        return base64.b64decode(raw + b"=" * (-len(raw) % 4), altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput("not valid base64")


async def images_from_strings(request: Request, strings: list[str], field: str = "images",
                              positions: Optional[Sequence[int]] = None) -> list[bytes]:
    """JSON image strings -> bytes: base64 and data URIs decoded here, https URLs fetched when the server allows
    them (CLIP_ALLOW_URLS; service/urls.py checks every hop). Local paths and file: URLs are always refused.
    An error names the string's place: `field`[i], or `field`[positions[i]] when the strings are some of its items."""
    place = (lambda i: i) if positions is None else positions.__getitem__
    fetcher = getattr(request.app.state, "url_fetcher", None)
    urls = {i: s.strip() for i, s in enumerate(strings) if is_url(s)}
    if urls and fetcher is None:
        raise BadInput(URLS_OFF).at(field, place(min(urls)))
    out = await _off_loop(sum(map(len, strings)), _decode_strings, strings, urls, lambda i: (field, place(i)))
    if urls:
        # all of a request's downloads together may hold no more memory than its body could (CLIP_MAX_BODY_BYTES)
        budget = ByteBudget(request.app.state.settings.max_body_bytes)

        async def one(i: int, url: str) -> bytes:
            try:
                return await fetcher.fetch(url, budget)
            except ApiError as exc:
                raise exc.at(field, place(i))

        tasks = [asyncio.ensure_future(one(i, u)) for i, u in urls.items()]
        try:
            for i, data in zip(urls, await asyncio.gather(*tasks)):
                out[i] = data
        finally:
            for t in tasks:  # one failed (or the client left): stop the other downloads too
                t.cancel()
    return out  # type: ignore[return-value]


def _decode_strings(strings: list[str], skip: dict[int, str],
                    where: Callable[[int], tuple[str, int]]) -> list[Optional[bytes]]:
    out: list[Optional[bytes]] = []
    for i, s in enumerate(strings):
        try:
            out.append(None if i in skip else decode_image_string(s))
        except ApiError as exc:  # placed here, where the item is known
            raise exc.at(*where(i))
    return out


async def _off_loop(size: int, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) in a thread when `size` (bytes of input) is large, so other requests keep being served.

    The thread still holds the GIL inside each C call (json.loads, pydantic, b64decode), so the loop can stall
    for the longest single call, no longer for their sum (numbers in the README's Security section)."""
    if size <= OFF_LOOP_BYTES:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)


@dataclass
class ParsedForm:
    """What a request carried, independent of its encoding."""

    images: list[bytes] = dataclass_field(default_factory=list)
    fields: dict[str, Any] = dataclass_field(default_factory=dict)


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_json(request: Request, model: type[BaseModel]) -> BaseModel:
    """Parse and validate a JSON body; malformed JSON is 400, wrong fields/types are 422. Large bodies are parsed
    in a thread (OFF_LOOP_BYTES)."""
    body = await request.body()
    return await _off_loop(len(body), parse_json, body, model)


def parse_json(body: bytes, model: type[BaseModel]) -> BaseModel:
    """JSON bytes -> a validated request model. Every way JSON can fail Python is a 400, decided here before any
    model work: too deep nesting (RecursionError), numbers over Python's 4,300-digit int limit (ValueError),
    invalid UTF-8, and lone UTF-16 surrogates ("\\ud800"), which are not text and cannot be UTF-8 encoded."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise BadInput("body nests too deeply: this server parses JSON up to about 900 levels")
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int digit limit
        reason = "a number has too many digits" if "integer string conversion" in str(exc) else str(exc)[:200]
        raise BadInput(f"body is not valid JSON: {reason}")
    if _SURROGATE_BYTES.search(body) or json.detect_encoding(body) != "utf-8":  # else none can be there
        reject_surrogates(data)
    return validate(model, data)


def reject_surrogates(data: Any) -> None:
    """400 naming the first string (or key) holding a lone surrogate. Iterative: JSON may nest ~900 deep."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise BadInput(f"{path or 'body'}: not valid Unicode text (it holds a lone UTF-16 surrogate such "
                               f"as \\ud800); send UTF-8 text", field=_top_field(path))
        elif isinstance(value, dict):
            for key in value:
                if _SURROGATE.search(key):
                    raise BadInput(f"{path or 'body'}: a key is not valid Unicode text (a lone UTF-16 surrogate)",
                                   field=_top_field(path))
            stack.extend((f"{path}.{k}" if path else k, v) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(value))))


def _top_field(path: str) -> Optional[str]:
    return re.split(r"[.\[]", path, maxsplit=1)[0] or None


def validate(model: type[BaseModel], data: Any) -> BaseModel:
    """Validate parsed fields (JSON or form parts) against a request model; wrong fields/types are 422."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidField(_pydantic_message(exc))


def _pydantic_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "body"
        parts.append(f"{loc}: {err.get('msg')}")
    return "; ".join(parts)


async def read_multipart(request: Request, max_files: int, max_fields: int) -> ParsedForm:
    """multipart/form-data: parts named `file` are images; other parts are fields (repeatable)."""
    try:
        form = await request.form(max_files=max_files + 1, max_fields=max_fields + 16)
    except (ApiError, ClientDisconnect):  # BodyLimit's 413 while the body streams in, or the client left: as is
        raise
    except Exception as exc:  # python-multipart raises several types for malformed bodies
        msg = str(getattr(exc, "detail", exc))  # Starlette wraps them in a 400 HTTPException: its detail, not "400: "
        if "Too many" in msg:
            raise PayloadTooLarge(f"too many parts in the form: {msg}")
        raise BadInput(f"malformed multipart body: {msg}")
    parsed = ParsedForm()
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key not in ("file", "files", "image", "images"):
                    raise InvalidField(f"unexpected file part {key!r}; name image parts 'file'")
                parsed.images.append(await value.read())
            else:  # a part's charset (e.g. unicode_escape) can decode to lone surrogates: refuse those
                if _SURROGATE.search(key) or _SURROGATE.search(value):
                    raise BadInput(f"form field {key!r}: not valid Unicode text (a lone UTF-16 surrogate)")
                parsed.fields.setdefault(key, []).append(value)
    finally:
        await form.close()
    return parsed


def single_field(fields: dict[str, list[str]], name: str) -> Optional[str]:
    values = fields.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise InvalidField(f"field {name!r} given {len(values)} times; give it once")
    return values[0]


def int_field(fields: dict[str, list[str]], name: str) -> Optional[int]:
    v = single_field(fields, name)
    if v is None:
        return None
    try:
        return int(v)
    except ValueError:
        raise InvalidField(f"{name}: must be an integer, got {v[:40]!r}{'...' if len(v) > 40 else ''}")
