"""A raw TCP client for tests of connection handling: sends bytes as slowly as asked and records what the
server answered and when it closed the connection."""

from __future__ import annotations

import socket
import threading
import time

GIVE_UP_S = 30.0  # a socket still open this long after the test starts with it was never cut off


class SlowClient(threading.Thread):
    """One raw connection: sends `first`, then `trickle` one byte at a time every 0.25 s, and records what the
    server sent back and when it closed the connection."""

    def __init__(self, port: int, first: bytes = b"", trickle: bytes = b"", give_up_s: float = GIVE_UP_S):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=give_up_s)
        self.first, self.trickle = first, trickle
        self.received = b""
        self.sent = 0  # bytes of `trickle` sent so far
        self.closed_after: float | None = None  # seconds from the start to the server closing
        self.start_time = time.monotonic()
        self.done = threading.Event()

    def run(self) -> None:
        if self.first:
            self.sock.sendall(self.first)
        threading.Thread(target=self._drip, daemon=True).start()
        try:
            while chunk := self.sock.recv(65536):
                self.received += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
        except socket.timeout:  # never cut off
            return
        finally:
            self.done.set()
        self.closed_after = time.monotonic() - self.start_time

    def _drip(self) -> None:
        for byte in self.trickle:
            if self.done.wait(0.25):
                return
            try:
                self.sock.send(bytes([byte]))
            except OSError:
                return
            self.sent += 1

    def close(self) -> None:
        self.sock.close()
