"""Turning request bodies into lists of image bytes / texts / labels, for JSON and multipart alike."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request

from service.errors import ApiError, BadInput, InvalidField, PayloadTooLarge, UnsupportedMedia
from service.urls import ByteBudget

_DATA_URI = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?((?:;[\w-]+=[^;,]*)*)(;base64)?,(.*)$", re.S)
_B64_CHARS = re.compile(rb"^[A-Za-z0-9+/_-]*={0,2}$")
_URL_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # scheme: (base64 never holds ':'; data: is handled first)
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


def decode_image_string(s: str, index: int) -> bytes:
    """base64 or data: URI -> bytes. Non-image data URIs are 415; bad base64 is 400."""
    s = s.strip()
    if s.startswith("data:"):
        m = _DATA_URI.match(s)
        if not m:
            raise BadInput(f"images[{index}]: malformed data URI")
        mime, is_b64, payload = (m.group(1) or "text/plain").lower(), bool(m.group(3)), m.group(4)
        if not mime.startswith("image/"):
            raise UnsupportedMedia(f"images[{index}]: data URI of type {mime!r} is not an image")
        if not is_b64:
            raise BadInput(f"images[{index}]: data URI must be base64-encoded")
        s = payload
    if is_path(s):
        raise BadInput(f"images[{index}]: local paths are never read; send the image bytes as base64")
    if is_url(s):
        raise BadInput(f"images[{index}]: {URLS_OFF}")
    raw = re.sub(r"\s+", "", s).encode()
    if not raw or not _B64_CHARS.match(raw):
        raise BadInput(f"images[{index}]: not valid base64")
    try:
        altchars = b"-_" if (b"-" in raw or b"_" in raw) else None
        return base64.b64decode(raw + b"=" * (-len(raw) % 4), altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(f"images[{index}]: not valid base64")


async def images_from_strings(request: Request, strings: list[str]) -> list[bytes]:
    """JSON image strings -> bytes: base64 and data URIs decoded here, https URLs fetched when the server allows
    them (CLIP_ALLOW_URLS; service/urls.py checks every hop). Local paths and file: URLs are always refused."""
    fetcher = getattr(request.app.state, "url_fetcher", None)
    urls = {i: s.strip() for i, s in enumerate(strings) if is_url(s)}
    if urls and fetcher is None:
        raise BadInput(f"images[{min(urls)}]: {URLS_OFF}")
    out: list[Optional[bytes]] = [None if i in urls else decode_image_string(s, i) for i, s in enumerate(strings)]
    if urls:
        # all of a request's downloads together may hold no more memory than its body could (CLIP_MAX_BODY_BYTES)
        budget = ByteBudget(request.app.state.settings.max_body_bytes)

        async def one(i: int, url: str) -> bytes:
            try:
                return await fetcher.fetch(url, budget)
            except ApiError as exc:
                raise type(exc)(f"images[{i}]: {exc.message}") from None

        tasks = [asyncio.ensure_future(one(i, u)) for i, u in urls.items()]
        try:
            for i, data in zip(urls, await asyncio.gather(*tasks)):
                out[i] = data
        finally:
            for t in tasks:  # one failed (or the client left): stop the other downloads too
                t.cancel()
    return out  # type: ignore[return-value]


@dataclass
class ParsedForm:
    """What a request carried, independent of its encoding."""

    images: list[bytes] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_json(request: Request, model: type[BaseModel]) -> BaseModel:
    """Parse and validate a JSON body; malformed JSON is 400, wrong fields/types are 422."""
    body = await request.body()
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(f"body is not valid JSON: {exc}")
    return validate(model, data)


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
        msg = str(exc)
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
            else:
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
        raise InvalidField(f"{name}: must be an integer, got {v!r}")
