"""The supervisor's own heartbeat to each engine process (CLIP_WORKERS >= 1): an engine that is alive but no longer
answers (stopped, deadlocked, its event loop held) is found here, so the supervisor can kill it and stop the server
as it does when an engine exits on its own (service/supervisor.py).

Why the supervisor and not the front-ends: the front-ends' heartbeats (service/engine_client.py) already make
/readyz 503 and fail calls after HEARTBEAT_TIMEOUT_S, but a front-end cannot end another process or the server, and
/healthz rightly stays 200 while it serves HTTP; so without this a hung engine left a server that is alive and never
ready, forever. The supervisor is the one process that can kill an engine and exit non-zero, it sees every engine
whatever the front-ends' state, and it needs no report from them.

What counts as silence: the time since the engine's latest answer, counted only once it has answered once. Its
event loop answers pings while the model loads and while batches encode (both run in its inference thread, beside
the loop), so neither a slow load nor a long encode holds the answers back: measured on the loaded 2-core machine
with ViT-B-32 (random weights, CLIP_THREADS=2, a ping every 50 ms), the slowest answer took 0.22 s during its 13 s
load and batch probe and 0.045 s while three 32-image requests encoded, far below the 30 s default. Before its first
answer the process is still importing, which the orchestrator's start-up probe (/readyz) bounds.
"""

from __future__ import annotations

import logging
import time
from typing import Optional, Sequence

import zmq

from service.ipc import pack

log = logging.getLogger("service.supervisor")

# at most this long between two pings to one engine; a quarter of the bound when that is shorter, so a silence is
# never mistaken for one because no ping was out
PING_S = 1.0


class HangWatch:
    """Pings each engine, without waiting; `silent()` says which have not answered for longer than `hang_s`."""

    def __init__(self, addresses: Sequence[str], hang_s: float):
        self.hang_s = hang_s
        self.ping_s = min(PING_S, hang_s / 4)
        self.ctx = zmq.Context()
        self.socks = []
        for address in addresses:
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(address)
            self.socks.append(sock)
        self.answered: list[Optional[float]] = [None] * len(self.socks)  # monotonic time of the latest answer
        self._sent = [float("-inf")] * len(self.socks)

    def silent(self) -> list[tuple[int, float]]:
        """Read the answers that came, ping the engines that are due, and return (engine index, seconds silent) of
        every engine silent for longer than the bound. Call it often (the supervisor's watch loop, every 0.2 s)."""
        for i, sock in enumerate(self.socks):
            while sock.poll(0, zmq.POLLIN):
                sock.recv_multipart(zmq.NOBLOCK)
                if self.answered[i] is None:
                    log.info("engine %d answers the supervisor's pings; from now on, silent for %gs "
                             "(CLIP_ENGINE_HANG_S) it is killed and the server exits 1", i, self.hang_s)
                self.answered[i] = time.monotonic()  # when read: a supervisor that was itself held sees no silence
            now = time.monotonic()
            if now - self._sent[i] >= self.ping_s:
                try:
                    sock.send_multipart(pack({"op": "ping", "id": 0}), zmq.NOBLOCK)
                except zmq.Again:  # not connected yet, or its queue is full of unanswered pings: nothing to add
                    pass
                self._sent[i] = now
        now = time.monotonic()
        return [(i, now - t) for i, t in enumerate(self.answered) if t is not None and now - t > self.hang_s]

    def close(self) -> None:
        for sock in self.socks:
            sock.close(0)
        self.ctx.term()
