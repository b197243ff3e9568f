"""Plain multipart bodies parsed strictly and fast: what POST /embed/image's fast path (service/routes/embed.py
FastImagePath) reads itself. A body this module does not return files for goes to Starlette's general parser, which
answers it as before, errors included."""

from __future__ import annotations

import re
from typing import Optional

from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive, Scope

IMAGE_PARTS = (b"file", b"files", b"image", b"images")  # the part names service/bodies.py read_multipart takes
_CONTENT_TYPE = re.compile(rb'^multipart/form-data\s*;\s*boundary=(?:"([^"\\\r\n]{1,70})"|([^\s";\\]{1,70}))\s*$',
                           re.I)
_DISPOSITION = re.compile(rb'^content-disposition:[ \t]*form-data;[ \t]*name="([a-z]+)";[ \t]*filename="[^"\\\r\n]*"'
                          rb'[ \t]*$', re.I)
_PART_CONTENT_TYPE = re.compile(rb"^content-type:[ \t]*[!-~][ -~]*$", re.I)


def boundary_of(scope: Scope) -> Optional[bytes]:
    """The boundary of a multipart/form-data request with one plain Content-Type header, else None."""
    values = [v for k, v in scope["headers"] if k == b"content-type"]
    if len(values) != 1:
        return None
    m = _CONTENT_TYPE.match(values[0])
    return (m.group(1) or m.group(2)) if m else None


def file_parts(body: bytes, boundary: bytes, max_files: int) -> Optional[list[bytes]]:
    """The files of a multipart body in order, or None unless every part is a file part named as IMAGE_PARTS with
    only Content-Disposition and Content-Type headers, between 1 and `max_files` of them, framed exactly (no preamble,
    at most a CRLF after the closing delimiter)."""
    opening, delimiter = b"--" + boundary + b"\r\n", b"\r\n--" + boundary
    if not body.startswith(opening):
        return None
    files: list[bytes] = []
    pos = len(opening)
    while len(files) < max_files:
        head_end = body.find(b"\r\n\r\n", pos)
        if head_end < 0 or not _plain_file_headers(body[pos:head_end].split(b"\r\n")):
            return None
        end = body.find(delimiter, head_end + 4)
        if end < 0:
            return None
        files.append(body[head_end + 4:end])
        pos = end + len(delimiter)
        if body.startswith(b"\r\n", pos):
            pos += 2
        elif body.startswith(b"--", pos):
            return files if body[pos + 2:] in (b"", b"\r\n") else None
        else:
            return None
    return None  # more parts than max_files: the route's parser says so


def _plain_file_headers(lines: list[bytes]) -> bool:
    """One Content-Disposition of a file part named as IMAGE_PARTS, at most one Content-Type, nothing else."""
    dispositions = [_DISPOSITION.match(line) for line in lines]
    named = [m for m in dispositions if m is not None]
    others = [line for line, m in zip(lines, dispositions) if m is None]
    return (len(named) == 1 and named[0].group(1) in IMAGE_PARTS and len(others) <= 1
            and all(_PART_CONTENT_TYPE.match(line) for line in others))


async def read_body(receive: Receive) -> bytes:
    """The whole body (BodyLimit, outside, bounds it); ClientDisconnect if the client leaves while sending it."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives `body` once, whole, then what the client sends next (its disconnect)."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return again
