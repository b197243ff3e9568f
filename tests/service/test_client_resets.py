"""A client that resets its connection (load balancers, killed indexing jobs, benchmark workers stopping) costs
that one request and nothing else: the process must not die of SIGPIPE when it writes to the dead socket."""

from __future__ import annotations

import json
import re
import socket
import struct
import time
from pathlib import Path

import httpx
import pytest

from tests.service.server import ServerProcess, metric_value

SIGPIPE_BIT = 1 << (13 - 1)  # SIGPIPE is signal 13; /proc/<pid>/status SigIgn bit n-1


def ignored_signals(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return int(line.split()[1], 16)
    raise AssertionError("no SigIgn line")


def test_the_server_process_ignores_sigpipe(server):
    assert ignored_signals(server.proc.pid) & SIGPIPE_BIT, "SIGPIPE is not ignored: a client reset can kill the server"


def send_then_reset(port: int, body: bytes, wait_s: float) -> None:
    """Send one full request, wait a little (the answer is being computed or written), then RST the connection."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(b"POST /embed/text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        time.sleep(wait_s)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close() sends RST
    finally:
        s.close()


@pytest.fixture
def own_server(bundled_dir, tmp_path):
    """A server of this test's own: the requests it abandons must not land on the shared one's later tests."""
    proc = ServerProcess({"CLIP_MODEL": str(bundled_dir)}, tmp_path / "server.log").wait_ready()
    yield proc
    proc.stop()


def test_connections_reset_mid_answer_leave_the_server_serving(own_server):
    server = own_server
    port = int(server.url.rsplit(":", 1)[1])
    # large answers (many 128-d embeddings) so the server is still writing when the reset arrives
    body = json.dumps({"texts": [f"a red circle number {i}" for i in range(256)]}).encode()
    for i in range(40):
        send_then_reset(port, body, wait_s=(i % 8) * 0.005)
    assert server.proc.poll() is None, f"the server died:\n{server.log()}"
    # The abandoned requests may still fill the queue (256 texts each, CLIP_MAX_QUEUE 256): a 503 then is the
    # documented back-pressure, so wait for the queue to empty before asking for an answer.
    deadline = time.monotonic() + 60
    while True:
        assert server.wait_idle(), "the queue never emptied"
        r = httpx.post(server.url + "/embed/text", json={"texts": ["a blue square"]}, timeout=30)
        if r.status_code != 503 or time.monotonic() > deadline:
            break
        assert r.json()["error"]["type"] == "overloaded", r.text
    assert r.status_code == 200 and len(r.json()["embeddings"]) == 1, r.text
    assert httpx.get(server.url + "/readyz", timeout=10).status_code == 200


def test_a_client_that_leaves_gets_its_queued_work_dropped(bundled_dir, tmp_path):
    """Texts still queued when their client closes the connection are not encoded (clip_dropped_total), the
    request is logged as 499, and the server goes on serving."""
    n = 2000
    server = ServerProcess({"CLIP_MODEL": str(bundled_dir), "CLIP_TEXT_MAX_BATCH": "1", "CLIP_MAX_QUEUE": str(n),
                            "CLIP_MAX_TEXTS_PER_REQUEST": str(n)}, tmp_path / "server.log").wait_ready()
    try:
        body = json.dumps({"texts": [f"a green star number {i}" for i in range(n)]}).encode()
        s = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=10)
        s.sendall(b"POST /embed/text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        deadline = time.monotonic() + 60  # queued: the encoder has begun on them, one text per call (seconds for 2000)
        while metric_value(server.metrics(), "clip_batch_size_count", modality="text") == 0:
            assert time.monotonic() < deadline, f"the texts were never queued:\n{server.log()}"
            time.sleep(0.02)
        s.close()
        deadline = time.monotonic() + 30
        while (dropped := metric_value(httpx.get(server.url + "/metrics").text, "clip_dropped_total",
                                       modality="text")) == 0:
            assert time.monotonic() < deadline, f"nothing was dropped:\n{server.log()}"
            time.sleep(0.1)
        assert 0 < dropped < n
        r = httpx.post(server.url + "/embed/text", json={"texts": ["a blue square"]}, timeout=30)
        assert r.status_code == 200
        assert '"status": 499' in server.log()
        assert metric_value(server.metrics(), "clip_requests_total", endpoint="/embed/text", status="499") == 1
    finally:
        server.stop()


def statuses(server, path: str) -> list[int]:
    """Statuses of every access-log line for `path` so far (the whole log, not server.log()'s tail)."""
    log = server.log_path.read_text(errors="replace")
    return [int(m) for m in re.findall(r'"path": "%s".*?"status": (\d+)' % re.escape(path), log)]


def test_a_client_that_leaves_mid_body_is_logged_499_not_a_client_error(server):
    """Half a multipart or JSON body, then the connection closes: that is the client leaving (499), not a
    malformed request (400) nor a server error (500)."""
    port = int(server.url.rsplit(":", 1)[1])
    start = len(server.log_path.read_text(errors="replace"))
    cases = [("/embed/image", "multipart/form-data; boundary=xyz", b'--xyz\r\nContent-Disposition: form-data; '
              b'name="file"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n\xff\xd8\xff\xe0' + b"\0" * 1000),
             ("/embed/text", "application/json", b'{"texts": ["a red ci')]
    for path, ctype, partial in cases:
        before = statuses(server, path)
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: 100000\r\n\r\n"
                  .encode() + partial)
        time.sleep(0.2)  # not a synchronisation: read before or with the close, the half body must be a 499
        s.close()
        deadline = time.monotonic() + 10
        while len(statuses(server, path)) == len(before):
            assert time.monotonic() < deadline, f"no access-log line for {path}:\n{server.log()[-3000:]}"
            time.sleep(0.05)
        assert statuses(server, path)[len(before):] == [499], server.log()[-3000:]
    assert "unhandled error" not in server.log_path.read_text(errors="replace")[start:]
