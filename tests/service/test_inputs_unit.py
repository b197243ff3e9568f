"""Large JSON bodies are parsed, validated and base64-decoded off the event loop, so other requests are served
meanwhile; small ones stay on it (a thread hop would cost more than the parse)."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from types import SimpleNamespace

import pytest
from pydantic import BaseModel, field_validator
from starlette.requests import Request

from service import bodies
from service.errors import BadInput
from service.schemas import EmbedImagesRequest

MB = 1024 * 1024
STARTED, LOOP_RAN = threading.Event(), threading.Event()


def _block_until_the_loop_runs() -> None:
    """Called from inside the parse: returns once the event loop has run something else meanwhile."""
    STARTED.set()
    assert LOOP_RAN.wait(3), "the event loop was blocked while the body was parsed"


class Probe(BaseModel):
    texts: list[str]

    @field_validator("texts")
    @classmethod
    def _waits_for_the_loop(cls, v: list[str]) -> list[str]:
        _block_until_the_loop_runs()
        return v


def _request(body: bytes) -> Request:
    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    return Request({"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b""}, receive)


async def _alongside(work) -> object:
    """Run `work` while another coroutine waits for it to start, then marks that the loop ran."""
    STARTED.clear()
    LOOP_RAN.clear()

    async def other() -> None:
        while not STARTED.is_set():
            await asyncio.sleep(0.005)
        LOOP_RAN.set()

    ticker = asyncio.create_task(other())
    try:
        return await work
    finally:
        ticker.cancel()


def test_a_1_mb_json_body_is_parsed_off_the_event_loop():
    body = json.dumps({"texts": ["x" * MB]}).encode()
    parsed = asyncio.run(_alongside(bodies.read_json(_request(body), Probe)))
    assert parsed.texts[0] == "x" * MB


def test_1_mb_of_base64_images_is_decoded_off_the_event_loop(monkeypatch):
    decode = bodies.decode_image_string

    def blocking_decode(s: str) -> bytes:
        _block_until_the_loop_runs()
        return decode(s)

    monkeypatch.setattr(bodies, "decode_image_string", blocking_decode)
    image = base64.b64encode(b"\x89PNG" * (MB // 4)).decode()
    request = _request(b"")
    request.scope["app"] = SimpleNamespace(state=SimpleNamespace(url_fetcher=None))  # URLs off
    out = asyncio.run(_alongside(bodies.images_from_strings(request, [image])))
    assert out == [b"\x89PNG" * (MB // 4)]


def test_a_small_body_is_parsed_inline():
    assert asyncio.run(bodies.read_json(_request(b'{"images": ["aGk="]}'), EmbedImagesRequest)).images == ["aGk="]
    with pytest.raises(BadInput, match="too many digits"):
        asyncio.run(bodies.read_json(_request(b'{"images": [' + b"9" * 5000 + b"]}"), EmbedImagesRequest))
