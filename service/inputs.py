"""Turning request bodies into lists of image bytes / texts / labels, for JSON and multipart alike."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import Request

from service.errors import BadInput, InvalidField, PayloadTooLarge, UnsupportedMedia

_DATA_URI = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?((?:;[\w-]+=[^;,]*)*)(;base64)?,(.*)$", re.S)
_B64_CHARS = re.compile(rb"^[A-Za-z0-9+/_-]*={0,2}$")


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
    if s.startswith(("http://", "https://", "file:", "/")):
        raise BadInput(f"images[{index}]: URLs and paths are not accepted; send the image bytes as base64")
    raw = re.sub(r"\s+", "", s).encode()
    if not raw or not _B64_CHARS.match(raw):
        raise BadInput(f"images[{index}]: not valid base64")
    try:
        altchars = b"-_" if (b"-" in raw or b"_" in raw) else None
        return base64.b64decode(raw + b"=" * (-len(raw) % 4), altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(f"images[{index}]: not valid base64")


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
