"""The connection guards of service/connections.py in-process: uvicorn in a thread runs the server's own protocol
class on a fake backend, with deadlines short enough to watch (1 s). tests/service/test_slow_clients.py checks
the same guards through `python -m service`; these run in a second and let the mutation check (make mutation)
see the protocol's code, which runs in the test's own process here."""

from __future__ import annotations

import base64
import json
import socket
import time
from types import SimpleNamespace

import httpx
import pytest

from service.connections import CUT_OFF, ConnectionLimits, close_all, protocol_class
from service.settings import Settings
from tests.service.app_thread import serving, url_of
from tests.service.fake_backend import COLOURS, named_app, png
from tests.service.raw_client import SlowClient

HEADER_S, BODY_S, MAX_CONNECTIONS = 1.0, 1.0, 4
GIVE_UP_S = 10.0  # ten times the deadlines: a connection still open this long was never cut off


def slow_client(port: int, first: bytes = b"", trickle: bytes = b"") -> SlowClient:
    """A raw connection that sends `first`, then `trickle` a byte every 0.25 s (tests/service/raw_client.py)."""
    client = SlowClient(port, first, trickle, give_up_s=GIVE_UP_S)
    client.start()
    return client


@pytest.fixture(scope="module")
def guarded():
    app, backends = named_app(Settings())
    limits = ConnectionLimits(HEADER_S, BODY_S, MAX_CONNECTIONS)
    with serving(app, http=protocol_class(limits, app.state.metrics), timeout_keep_alive=30) as server:
        yield SimpleNamespace(url=url_of(server), port=server.config.port, metrics=app.state.metrics,
                              connections=server.server_state.connections, backend=backends[0])
        backends[0].gate.set()  # a test that held the encoder and failed must not keep the app waiting


@pytest.fixture(autouse=True)
def no_connection_left(request):
    """After each test every connection it opened is gone from the server's count, the one CLIP_MAX_CONNECTIONS
    caps: a connection cut off by a deadline must not hold a place."""
    yield
    if "guarded" in request.fixturenames:
        server = request.getfixturevalue("guarded")
        wait_until(lambda: not server.connections, f"the server still counts {len(server.connections)} connection(s)")


def rejected(server, reason: str) -> float:
    return server.metrics.rejected.labels(reason)._value.get()


def requests(server, endpoint: str, status: str) -> float:
    return server.metrics.requests.labels(endpoint, status)._value.get()


def finished(client: SlowClient) -> SlowClient:
    client.join(GIVE_UP_S + 5)
    assert client.closed_after is not None, "never cut off"
    return client


def answer(raw: bytes) -> tuple[int, dict[str, str], dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body)


def wait_until(check, what: str, timeout: float = GIVE_UP_S) -> None:
    limit = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < limit, f"timed out waiting until {what}"
        time.sleep(0.01)


def test_a_connection_that_sends_nothing_is_closed_unanswered(guarded):
    before = rejected(guarded, "header_timeout")
    silent = slow_client(guarded.port)
    finished(silent)
    assert silent.received == b"" and silent.closed_after >= HEADER_S * 0.9, (silent.received, silent.closed_after)
    assert rejected(guarded, "header_timeout") - before == 1


@pytest.mark.parametrize("first,trickle", [
    (b"POST /embed/text HTTP/1.1\r\nHost: x\r\nX-Slow: ", b""),  # half the headers, then nothing
    (b"GET /info HTTP/1.1\r\n", b"X-Slow: " + b"a" * 200),  # a byte every 0.25 s: data does not reset the clock
])
def test_headers_not_complete_in_time_get_408(guarded, first, trickle):
    before = rejected(guarded, "header_timeout")
    client = slow_client(guarded.port, first, trickle=trickle)
    finished(client)
    status, headers, body = answer(client.received)
    assert status == 408 and headers["connection"] == "close", client.received
    assert body["error"]["type"] == "request_timeout" and "CLIP_HEADER_TIMEOUT_S" in body["error"]["message"]
    assert client.closed_after >= HEADER_S * 0.9
    assert rejected(guarded, "header_timeout") - before == 1


def test_a_body_not_complete_in_time_under_v1_gets_openais_error_shape(guarded):
    head = (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n")
    client = slow_client(guarded.port, head + b'{"input": "')
    finished(client)
    status, _, body = answer(client.received)
    assert status == 408 and body["error"]["code"] == "request_timeout", client.received
    assert body["error"]["type"] == "invalid_request_error" and "CLIP_BODY_TIMEOUT_S" in body["error"]["message"]


def test_a_body_not_complete_in_time_gets_408_and_is_logged_as_408(guarded):
    before = (rejected(guarded, "body_timeout"), requests(guarded, "/embed/text", "408"))
    head = b"POST /embed/text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    client = slow_client(guarded.port, head + b'{"texts": ["', trickle=b"a" * 900)
    finished(client)
    status, headers, body = answer(client.received)
    assert status == 408 and headers["connection"] == "close", client.received
    assert body["error"]["type"] == "request_timeout" and "CLIP_BODY_TIMEOUT_S" in body["error"]["message"]
    assert client.closed_after >= BODY_S * 0.9 and client.sent >= 1  # the trickle had begun: data did not help
    assert rejected(guarded, "body_timeout") - before[0] == 1
    # the app saw a disconnect; the request is logged with the status the client got (once the app has ended)
    wait_until(lambda: requests(guarded, "/embed/text", "408") - before[1] == 1, "the request is logged as 408")


def test_an_answered_request_with_an_unread_body_is_closed_without_a_second_answer(guarded):
    """The app answers (404) without reading the body; when the body deadline passes, the connection closes and
    nothing more is written to it."""
    before = rejected(guarded, "body_timeout")
    head = b"POST /no-such-route HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    client = slow_client(guarded.port, head + b"{")
    finished(client)
    assert client.received.startswith(b"HTTP/1.1 404") and b" 408 " not in client.received, client.received
    assert rejected(guarded, "body_timeout") - before == 1


def test_a_stalled_pipelined_request_writes_no_408_where_the_answer_before_it_belongs(guarded):
    """A client pipelines a second request whose headers stall while the first is still being answered (its
    image holds the encoder): the header deadline closes the connection, and writes no 408 into the stream where
    the first answer belongs."""
    body = json.dumps({"images": [base64.b64encode(png(COLOURS["hold"])).decode()]}).encode()
    first = (b"POST /embed/image HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
             b"\r\n%s" % (len(body), body))
    before = rejected(guarded, "header_timeout")
    try:
        client = slow_client(guarded.port, first + b"POST /embed/text HTTP/1.1\r\nHost: x\r\n")
        assert guarded.backend.holding.wait(GIVE_UP_S), "the first request never reached the encoder"
        finished(client)
    finally:
        guarded.backend.gate.set()
    assert client.received == b"", client.received
    assert rejected(guarded, "header_timeout") - before == 1


def test_each_request_on_a_kept_alive_connection_has_its_own_header_clock(guarded):
    """Idle between requests is the keep-alive timeout's business (30 s here), not the header deadline's; the next
    request's headers get their own CLIP_HEADER_TIMEOUT_S from its first byte."""
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=GIVE_UP_S) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
        time.sleep(2 * HEADER_S)  # the scenario: idle for longer than a header deadline (not a synchronisation)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        second = sock.recv(65536)
        assert second.startswith(b"HTTP/1.1 200"), f"the idle connection was cut: {second!r}"
        start = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # a third request, its headers never finished
        third = b""
        while chunk := sock.recv(65536):
            third += chunk
        assert third.startswith(b"HTTP/1.1 408") and time.monotonic() - start >= HEADER_S * 0.9, third


def test_connections_up_to_the_cap_are_served_and_those_over_it_get_503(guarded):
    before = rejected(guarded, "too_many_connections")
    holders = [socket.create_connection(("127.0.0.1", guarded.port)) for _ in range(MAX_CONNECTIONS - 1)]
    try:
        wait_until(lambda: len(guarded.connections) == MAX_CONNECTIONS - 1, "the holders' connections are open")
        with httpx.Client(timeout=30) as client:  # the last place under the cap
            assert client.post(guarded.url + "/embed/text", json={"texts": ["a"]}).status_code == 200
        wait_until(lambda: len(guarded.connections) == MAX_CONNECTIONS - 1, "that connection has closed")
        holders.append(socket.create_connection(("127.0.0.1", guarded.port)))
        wait_until(lambda: len(guarded.connections) == MAX_CONNECTIONS, "the cap is reached")
        r = httpx.post(guarded.url + "/embed/text", json={"texts": ["a"]}, timeout=30)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["type"] == "overloaded" and "CLIP_MAX_CONNECTIONS=4" in r.json()["error"]["message"]
        assert r.headers["Retry-After"] and r.headers["connection"] == "close"
        assert httpx.get(guarded.url + "/healthz", timeout=30).status_code == 200  # liveness is not refused
        assert rejected(guarded, "too_many_connections") - before == 2  # the request's and the probe's
    finally:
        for s in holders:
            s.close()


class _Transport:
    def __init__(self, closing: bool = False):
        self.closing, self.aborted = closing, False

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.aborted = True


def test_close_all_aborts_what_is_open_and_marks_unanswered_requests_503():
    unanswered = SimpleNamespace(transport=_Transport(), cycle=SimpleNamespace(response_started=False, scope={}))
    answering = SimpleNamespace(transport=_Transport(), cycle=SimpleNamespace(response_started=True, scope={}))
    idle = SimpleNamespace(transport=_Transport(), cycle=None)
    closing = SimpleNamespace(transport=_Transport(closing=True), cycle=SimpleNamespace(response_started=False,
                                                                                      scope={}))
    never_made = SimpleNamespace(transport=None, cycle=None)
    assert close_all([closing, never_made, unanswered, answering, idle]) == 3  # skipping one goes on to the next
    assert unanswered.transport.aborted and answering.transport.aborted and idle.transport.aborted
    assert not closing.transport.aborted
    assert unanswered.cycle.scope == {"extensions": {CUT_OFF: 503}}
    assert answering.cycle.scope == {} and closing.cycle.scope == {}
