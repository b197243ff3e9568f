"""The wire between front-end and engine processes (CLIP_WORKERS >= 1): ZeroMQ multipart messages.

One message is [header, *arrays] (or, from an engine, several replies as one: `pack_many`): the header a msgpack
map (msgspec) with the request `id`, its `op` and small fields, plus `arrays` = [(dtype, shape), ...] describing the
frames after it; each array travels as its raw bytes (copied into ZeroMQ's buffer up to COPY_THRESHOLD, handed over
without a copy above it) and is read back as a numpy view of the received frame. Images cross as uint8
[N, H, W, 3] pixels (or stay in a front-end's shared-memory ring, service/pixel_ring.py, and the header names their
slots), tokens as int64 [N, L], embeddings as float32 [N, D]: never pickled objects.

An error crosses as its class name, message, field, index and retry-after, and is raised again on the other side
as the same ApiError class, so service/errors.py maps it to the same status and body as in one process.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Callable, Optional, Sequence

import msgspec
import numpy as np
import zmq

from service import errors
from service.errors import ApiError, BackendFailure

# Frames up to this size are copied into ZeroMQ's buffer when sent; larger ones are handed over without a copy. A
# zero-copy send costs a message to pyzmq's garbage-collector thread when ZeroMQ lets go of the buffer: with one
# 224 px image (150 KB) per request that thread took ~6 % of a front-end's profile samples, while sending and receiving
# such a frame cost the same CPU either way in a micro-benchmark (~50 us over a tiny frame's).
COPY_THRESHOLD = 1 << 20
# plain ints: pyzmq's constants are enum members, and `events & zmq.POLLIN` built a new enum member each time (~2 % of
# an engine's event loop); the socket's `get` through pyzmq's Python layer costs twice its Cython base's
_EVENTS, _POLLIN, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)
_get_option = zmq.backend.Socket.get
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


Message = tuple[dict[str, Any], Sequence[np.ndarray]]


def pack(header: dict[str, Any], arrays: Sequence[np.ndarray] = ()) -> list:
    """A message: the header, then each array's bytes (C-contiguous, not copied here)."""
    head, frames = _described(header, arrays)
    return [_encoder.encode(head), *frames]


def pack_many(messages: Sequence[Message]) -> list:
    """Several messages to one peer as one: the header {"many": [header, ...]}, then every message's arrays in order.
    An engine answers all the requests a batch finished for one front-end this way: one send, one receive."""
    heads, frames = [], []
    for header, arrays in messages:
        head, data = _described(header, arrays)
        heads.append(head)
        frames += data
    return [_encoder.encode({"many": heads}), *frames]


def _described(header: dict[str, Any], arrays: Sequence[np.ndarray]) -> tuple[dict[str, Any], list]:
    arrays = [np.ascontiguousarray(a) for a in arrays]
    return ({**header, "arrays": [(a.dtype.str, list(a.shape)) for a in arrays]},
            [memoryview(a).cast("B") if a.size else b"" for a in arrays])


def unpack(frames: Sequence[Any]) -> tuple[dict[str, Any], list[np.ndarray]]:
    """A received message (zmq Frames or bytes) -> (header, arrays). Arrays are read-only views of the frames."""
    return _arrays_of(_decoder.decode(frames[0]), frames, 1)[0]


def unpack_all(frames: Sequence[Any]) -> list[tuple[dict[str, Any], list[np.ndarray]]]:
    """A received message, one (pack) or several (pack_many), -> [(header, arrays), ...] in the order sent."""
    header = _decoder.decode(frames[0])
    if "many" not in header:
        return [_arrays_of(header, frames, 1)[0]]
    out, at = [], 1
    for head in header["many"]:
        message, at = _arrays_of(head, frames, at)
        out.append(message)
    return out


def _arrays_of(header: dict[str, Any], frames: Sequence[Any], at: int) -> tuple[tuple[dict, list], int]:
    """(header, its arrays read from frames[at:]), and the index of the frame after them."""
    described = header.pop("arrays", ())
    arrays = [np.frombuffer(f, dtype=np.dtype(d)).reshape(shape)  # zmq Frames and bytes both have the buffer protocol
              for f, (d, shape) in zip(frames[at:at + len(described)], described)]
    return (header, arrays), at + len(described)


def socket_dir(address: str) -> Optional[str]:
    """The directory of an ipc:// address's socket file (the supervisor's temp dir), or None for another transport."""
    return os.path.dirname(address.removeprefix("ipc://")) if address.startswith("ipc://") else None


def error_fields(exc: BaseException) -> dict[str, Any]:
    """An exception as header fields. Errors that are not ApiErrors (a bug in the engine process) cross as
    `internal_error`, which the front-end answers with 500, as one process would."""
    if isinstance(exc, ApiError):
        return {"error": type(exc).__name__, "message": exc.message, "field": exc.field, "index": exc.index,
                "retry_after": exc.retry_after}
    return {"error": "ApiError", "message": f"engine process: {type(exc).__name__}: {exc}"[:500], "field": None,
            "index": None, "retry_after": None}


def raise_error(header: dict[str, Any]) -> None:
    """Raise the ApiError a reply carries, if any, as the class it was in the engine process."""
    name = header.get("error")
    if name is None:
        return
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, ApiError)):
        cls = ApiError
    raise cls(header.get("message") or "", retry_after=header.get("retry_after"), field=header.get("field"),
              index=header.get("index"))


class LoopSocket:
    """A plain zmq socket driven by the asyncio loop: `on_message(frames)` is called for each message received,
    `send(frames)` never waits. Measured on the 2-core machine, zmq.asyncio's futures and flag bookkeeping were the
    largest share of the engine process's own CPU per request; this reads the socket's file descriptor instead.

    ZeroMQ's descriptor is edge-triggered: it signals that the socket's state may have changed, and any operation
    (a send included) may consume that signal, so after each one the socket is read until it has nothing left.
    """

    def __init__(self, sock: zmq.Socket, on_message: Callable[[list], None]):
        self.sock, self.on_message = sock, on_message
        sock.copy_threshold = COPY_THRESHOLD
        self.loop = asyncio.get_running_loop()
        self._fd = sock.getsockopt(zmq.FD)
        self.loop.add_reader(self._fd, self._drain)
        self.loop.call_soon(self._drain)  # what arrived before the reader was added

    def _drain(self) -> None:
        sock = self.sock
        while not sock.closed and _get_option(sock, _EVENTS) & _POLLIN:
            self.on_message(sock.recv_multipart(_NOBLOCK, copy=False))

    def send(self, frames: list) -> None:
        """Queue one message. A peer that cannot take it (a DEALER with no engine connected, a full queue) is a
        BackendFailure at once, never a wait."""
        try:
            self.sock.send_multipart(frames, _NOBLOCK, copy=False)
        except zmq.Again:
            raise BackendFailure("the engine process is not reachable", retry_after=5) from None
        finally:
            self.loop.call_soon(self._drain)

    def close(self) -> None:
        if not self.sock.closed:
            self.loop.remove_reader(self._fd)
            self.sock.close(0)
