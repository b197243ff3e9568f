"""CLIP_WORKERS=2: two HTTP front-end processes and one engine process behave as one server.

Which front-end serves a request is the kernel's choice; every access-log line names the process that served it
(`pid`), so each test that needs both front-ends sends requests on fresh connections until both have served one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from tests.service.conftest import encode, shape_image
from tests.service.gated import GatedServer
from tests.service.server import ServerProcess, metric_value

SPLIT = {"CLIP_WORKERS": "2", "CLIP_PREPROCESS_WORKERS": "2"}
TRIES = 200  # fresh connections before giving up on seeing both front-ends serve


def layout(server) -> tuple[list[int], list[int]]:
    """(front-end pids, engine pids) from the supervisor's start-up line."""
    deadline = time.monotonic() + 60
    while not (m := re.search(r"process layout: .*?pids \[([\d, ]+)\]; engine\(s\) (.*?); metrics",
                              Path(server.log_path).read_text(errors="replace"))):
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)
    return [int(p) for p in m.group(1).split(",")], [int(p) for p in re.findall(r"pid (\d+) at", m.group(2))]


def served(server, path: str) -> list[tuple[int, int]]:
    """(status, pid) of every logged request to `path`, in order."""
    out = []
    for line in Path(server.log_path).read_text(errors="replace").splitlines():
        if "service.access" in line and f'"path": "{path}"' in line:
            entry = json.loads(line[line.index("{"):])
            out.append((entry["status"], entry["pid"]))
    return out


def fresh(method: str, url: str, **kw) -> httpx.Response:
    """One request on its own connection (so the kernel picks a front-end for it)."""
    with httpx.Client(timeout=60) as c:
        return c.request(method, url, **kw)


def until_both_served(server, path: str, send, fronts: list[int]) -> None:
    """Call send() until requests to `path` have been logged by every front-end."""
    for _ in range(TRIES):
        if {pid for _, pid in served(server, path)} >= set(fronts):
            return
        send()
    raise AssertionError(f"{path}: not every front-end {fronts} served one in {TRIES} tries: {served(server, path)}")


@pytest.fixture(scope="module")
def split(bundled_dir, tmp_path_factory):
    proc = ServerProcess({"CLIP_MODEL": str(bundled_dir), "CLIP_IMAGE_MAX_WAIT_MS": "20", **SPLIT},
                         tmp_path_factory.mktemp("split") / "server.log").wait_ready()
    yield proc
    proc.stop()


# --- the same answers, and the whole server behind any front-end ----------------------------------------------------
def test_split_answers_as_one_process(split, server):
    images = [encode(shape_image("red", "circle")), encode(shape_image("blue", "square"), "JPEG")]
    files = [("file", (f"{i}.png", b)) for i, b in enumerate(images)]
    labels = {"labels": ["red circle", "blue square", "green star"]}
    for path, kw in (("/embed/image", {"files": files}), ("/embed/text", {"json": {"texts": ["a red circle", "x"]}}),
                     ("/classify", {"files": files, "data": labels}),
                     ("/v1/embeddings", {"json": {"model": "clip", "input": ["a red circle", "data:image/png;base64,"
                                                  + __import__("base64").b64encode(images[0]).decode()]}})):
        a, b = httpx.post(split.url + path, timeout=60, **kw), httpx.post(server.url + path, timeout=60, **kw)
        assert a.status_code == b.status_code == 200, (a.text, b.text)
        ja, jb = a.json(), b.json()
        if path == "/classify":
            assert [[r["label"] for r in row] for row in ja["results"]] == \
                [[r["label"] for r in row] for row in jb["results"]]
            got = [[r["score"] for r in row] for row in ja["results"]]
            want = [[r["score"] for r in row] for row in jb["results"]]
        elif path == "/v1/embeddings":
            got, want = [d["embedding"] for d in ja["data"]], [d["embedding"] for d in jb["data"]]
            assert ja["usage"] == jb["usage"]
        else:
            got, want = ja["embeddings"], jb["embeddings"]
        np.testing.assert_allclose(np.array(got), np.array(want), atol=1e-5, err_msg=path)


def test_decoded_images_reach_the_engine_through_shared_memory(split):
    """Each front-end puts its decoded images in a ring of slots in the server's temp dir on /dev/shm (the answers
    above are the same as one process's through it); the ring goes with the server's temp dir."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm on this host")
    fronts, _ = layout(split)
    log = Path(split.log_path).read_text()
    ring = r"through shared memory: \d+ slots of \(\d+, \d+, 3\) in (/dev/shm/clip-serve-\S+/pixels-(\d+)-\S+)"
    rings = re.findall(ring, log)
    assert {int(pid) for _, pid in rings} == set(fronts), log[-3000:]
    assert all(Path(path).exists() for path, _ in rings)


def test_label_set_put_on_one_front_end_is_seen_by_the_other(split):
    fronts, _ = layout(split)
    put = fresh("PUT", split.url + "/labelsets/split-shapes", json={"labels": ["red circle", "blue square"]})
    assert put.status_code == 200, put.text
    until_both_served(split, "/labelsets/split-shapes",
                      lambda: fresh("GET", split.url + "/labelsets/split-shapes"), fronts)
    gets = [s for s, _ in served(split, "/labelsets/split-shapes")]
    assert gets and all(s == 200 for s in gets), gets  # the PUT (200) and every GET, on either front-end
    assert fresh("DELETE", split.url + "/labelsets/split-shapes").status_code == 204
    for _ in range(6):  # deleted everywhere: no front-end still has it
        assert fresh("GET", split.url + "/labelsets/split-shapes").status_code == 404


def test_metrics_on_any_front_end_count_the_requests_of_both(split):
    fronts, _ = layout(split)
    before = metric_value(split.metrics(), "clip_requests_total", endpoint="/embed/text", status="200")
    sent = 0

    def send() -> None:
        nonlocal sent
        assert fresh("POST", split.url + "/embed/text", json={"texts": ["a red circle"]}).status_code == 200
        sent += 1

    until_both_served(split, "/embed/text", send, fronts)
    for _ in range(4):  # whichever front-end answers the scrape
        after = metric_value(fresh("GET", split.url + "/metrics").text, "clip_requests_total", endpoint="/embed/text",
                             status="200")
        assert after - before == sent, (before, after, sent)
    text = split.metrics()
    assert metric_value(text, "clip_ready") == 1 and metric_value(text, "clip_queue_capacity", modality="image") == 256


def test_front_ends_load_no_model_runtime_and_stay_small(split):
    fronts, engines = layout(split)
    for pid in fronts:
        maps = Path(f"/proc/{pid}/maps").read_text()
        loaded = {lib for lib in ("libtorch", "onnxruntime", "torchvision", "libcudart") if lib in maps}
        assert not loaded, f"front-end {pid} maps {loaded}"  # open_clip imports torch: libtorch would show
        rss_mb = int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1)) / 1024
        assert rss_mb < 200, f"front-end {pid}: {rss_mb:.0f} MB"
    assert "libtorch" in Path(f"/proc/{engines[0]}/maps").read_text(), "the engine is what holds the model"


# --- one queue, drops, drain and crashes across processes (the encoder held: tests/service/gated.py) ----------------
@pytest.fixture(scope="module")
def held(bundled_dir, tmp_path_factory):
    proc = GatedServer({"CLIP_MODEL": str(bundled_dir), "CLIP_MAX_QUEUE": "4", "CLIP_IMAGE_MAX_BATCH": "1",
                        "CLIP_IMAGE_MAX_WAIT_MS": "1", "CLIP_REQUEST_TIMEOUT_S": "120", **SPLIT},
                       tmp_path_factory.mktemp("held")).wait_ready()
    yield proc
    proc.stop()


def _wait(condition, what: str, server, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}\n{server.log()}"
        time.sleep(0.05)


def test_queue_capacity_is_one_for_all_front_ends(held):
    """CLIP_MAX_QUEUE=4 with the encoder held: of one-image requests spread over both front-ends, exactly 4 are
    admitted in all (per-front-end queues would admit up to 4 each)."""
    fronts, _ = layout(held)
    image = encode(shape_image("red", "circle"))
    for _ in range(10):  # a round counts only when both front-ends took part in it
        start = len(served(held, "/embed/image"))
        held.hold()
        results: list = []
        threads = [threading.Thread(target=lambda: results.append(fresh(
            "POST", held.url + "/embed/image", files=[("file", ("x.png", image))]))) for _ in range(10)]
        for t in threads:
            t.start()
        _wait(lambda: sum(1 for r in results if r.status_code == 503) + metric_value(
            held.metrics(), "clip_queue_depth", modality="image") >= 10, "all 10 admitted or refused", held)
        depth = metric_value(held.metrics(), "clip_queue_depth", modality="image")
        held.release()
        for t in threads:
            t.join(120)
        assert depth == 4, depth
        codes = sorted(r.status_code for r in results)
        assert codes == [200] * 4 + [503] * 6, codes
        assert all(r.headers.get("Retry-After") for r in results if r.status_code == 503)
        if {pid for _, pid in served(held, "/embed/image")[start:]} >= set(fronts):
            return
    pytest.fail(f"the kernel never spread a round over both front-ends {fronts}")


def test_client_that_leaves_drops_its_queued_items(held):
    image = encode(shape_image("blue", "square"))
    dropped = metric_value(held.metrics(), "clip_dropped_total", modality="image")
    entered = held.entered()
    held.hold()
    first = threading.Thread(target=fresh, args=("POST", held.url + "/embed/image"),
                             kwargs={"files": [("file", ("a.png", image))]})
    first.start()
    held.wait_entered(entered + 1)  # its batch (of 1) is in the encoder; whatever comes next waits in the queue
    request = httpx.Request("POST", held.url + "/embed/image",
                            files=[("file", ("b.png", image)), ("file", ("c.png", image))])
    raw = request.read()
    head = "".join(f"{k}: {v}\r\n" for k, v in request.headers.items())
    with socket.create_connection(("127.0.0.1", held.port)) as s:
        s.sendall(f"POST /embed/image HTTP/1.1\r\n{head}\r\n".encode() + raw)
        _wait(lambda: metric_value(held.metrics(), "clip_queue_depth", modality="image") == 3, "2 more queued", held)
    # the connection is closed: the front-end cancels, the engine drops both items when the batcher reaches them
    _wait(lambda: any(s == 499 for s, _ in served(held, "/embed/image")), "the 499 logged", held)
    held.release()
    first.join(60)
    _wait(lambda: metric_value(held.metrics(), "clip_dropped_total", modality="image") == dropped + 2,
          "2 items dropped", held)
    assert held.entered() == entered + 1, "the dropped items never reached the encoder"


def test_sigterm_drains_every_process_and_exits_0(bundled_dir, tmp_path):
    server = GatedServer({"CLIP_MODEL": str(bundled_dir), "CLIP_DRAIN_S": "60", "CLIP_IMAGE_MAX_BATCH": "2",
                          "CLIP_REQUEST_TIMEOUT_S": "60", **SPLIT}, tmp_path).wait_ready()
    try:
        fronts, engines = layout(server)
        image = encode(shape_image("green", "star"))
        results: list = []
        server.hold()
        threads = [threading.Thread(target=lambda: results.append(fresh(
            "POST", server.url + "/embed/image", files=[("file", ("x.png", image))]))) for _ in range(8)]
        for t in threads:
            t.start()
        _wait(lambda: metric_value(server.metrics(), "clip_queue_depth", modality="image") == 8, "8 admitted", server)
        server.signal(signal.SIGTERM)
        _wait(lambda: _readyz(server) != 200, "/readyz not 200 after SIGTERM", server)
        server.release()
        for t in threads:
            t.join(120)
        assert sorted(r.status_code for r in results) == [200] * 8, [r.text[:200] for r in results]
        assert server.proc.wait(60) == 0, server.log()
        for pid in fronts + engines:
            assert not _alive(pid), pid
    finally:
        server.stop()


def test_engine_crash_fails_in_flight_work_and_exits_non_zero(bundled_dir, tmp_path):
    import os

    server = GatedServer({"CLIP_MODEL": str(bundled_dir), **SPLIT}, tmp_path).wait_ready()
    try:
        _, engines = layout(server)
        image = encode(shape_image("red", "circle"))
        t, results = held_request(server, image)
        os.kill(engines[0], signal.SIGKILL)
        t.join(60)
        assert results and results[0].status_code == 503, results and results[0].text
        assert results[0].json()["error"]["type"] == "backend_error"
        assert _readyz(server) in (503, None)  # from here on never ready again: 503, or no server at all
        assert server.proc.wait(60) == 1, server.log()
        assert "exited with -9" in server.log()
    finally:
        server.stop()


@pytest.mark.slow  # 18-21 s: it waits out CLIP_ENGINE_HANG_S
def test_a_hung_engine_is_killed_and_the_server_exits_non_zero(bundled_dir, tmp_path):
    """An engine that stops answering (SIGSTOP) without exiting: the front-end's /readyz goes 503 (its heartbeat
    times out), and after CLIP_ENGINE_HANG_S the supervisor kills the engine and the server exits 1, as for a crash;
    never a server that is alive and not ready forever."""
    import os

    hang_s = 12.0  # above the front-ends' 5 s heartbeat timeout, so /readyz is 503 for a while before the exit
    server = ServerProcess({"CLIP_MODEL": str(bundled_dir), "CLIP_ENGINE_HANG_S": str(hang_s), **SPLIT,
                            "CLIP_WORKERS": "1"}, tmp_path / "server.log").wait_ready()
    engines: list[int] = []
    try:
        _, engines = layout(server)
        _wait(lambda: _logged(server, "engine 0 answers the supervisor's pings"), "the supervisor's watch on", server)
        os.kill(engines[0], signal.SIGSTOP)
        stopped = time.monotonic()
        _wait(lambda: _readyz(server) == 503 or server.proc.poll() is not None, "/readyz 503", server)
        assert server.proc.poll() is None, f"exited before /readyz was seen 503\n{server.log()}"
        assert server.proc.wait(hang_s + 60) == 1, server.log()
        silent_s = time.monotonic() - stopped
        assert silent_s > hang_s - 2, f"killed after {silent_s:.1f}s, before CLIP_ENGINE_HANG_S={hang_s:g}"
        assert _logged(server, f"engine 0 (clip-engine-0, pid {engines[0]}) has not answered for"), server.log()
        assert _logged(server, "exited with -9"), server.log()
        assert not _alive(engines[0])
    finally:
        if engines and _alive(engines[0]):
            os.kill(engines[0], signal.SIGCONT)  # so a failed test's server can still stop
        server.stop()


@pytest.mark.slow  # 18-20 s: four hang bounds of loading, four of encoding
def test_a_slow_load_and_a_long_encode_are_not_hangs(bundled_dir, tmp_path):
    """The engine answers pings while its model loads and while a batch encodes (both in its inference thread):
    with CLIP_ENGINE_HANG_S=2, a load held for 4 bounds and an encode held for 4 bounds leave the server up."""
    hang_s = 2.0
    server = GatedServer({"CLIP_MODEL": str(bundled_dir), "CLIP_ENGINE_HANG_S": str(hang_s), **SPLIT,
                          "CLIP_WORKERS": "1"}, tmp_path, loaded=False)
    try:
        _wait(lambda: _logged(server, "engine 0 answers the supervisor's pings"), "the supervisor's watch on", server)
        since = time.monotonic()
        _wait(lambda: time.monotonic() > since + 4 * hang_s, "4 bounds of loading", server)  # the condition itself
        assert server.proc.poll() is None and not _logged(server, "has not answered"), server.log()
        server.open_load()
        server.wait_ready()
        t, results = held_request(server, encode(shape_image("red", "circle")))
        since = time.monotonic()
        _wait(lambda: time.monotonic() > since + 4 * hang_s, "4 bounds of encoding", server)
        server.release()
        t.join(60)
        assert results and results[0].status_code == 200, results and results[0].text
        assert server.proc.poll() is None and not _logged(server, "has not answered"), server.log()
    finally:
        server.stop()


def _logged(server, text: str) -> bool:
    """Whether the server's whole log (server.log() is its tail) holds `text`."""
    return text in Path(server.log_path).read_text(errors="replace")


def held_request(server, image: bytes) -> tuple[threading.Thread, list]:
    """One /embed/image sent from a thread and held in the encoder (server.hold()); its response lands in the list."""
    entered = server.entered()
    server.hold()
    results: list = []
    t = threading.Thread(target=lambda: results.append(fresh(
        "POST", server.url + "/embed/image", files=[("file", ("x.png", image))])))
    t.start()
    server.wait_entered(entered + 1)
    return t, results


def _readyz(server) -> int | None:
    try:
        return httpx.get(server.url + "/readyz", timeout=10).status_code
    except httpx.HTTPError:
        return None


def test_two_engines_share_the_work_and_every_label_set(bundled_dir, tmp_path):
    """CLIP_DEVICES=cpu,cpu: two engine processes. With the encoders held, a second one-image request goes to the
    engine that is not busy (both encoders are entered at once: one engine, one encoder call at a time, could not);
    a PUT label set is computed and kept by both (two cached classifiers). One front-end, so that it knows exactly
    what it has sent where (two would each see the other's work only as of their latest reply from each engine).
    Which engine is picked is not left to timing: every engine reply carries its queue load, so the second pick sees
    engine A busy (its reserve reply, and this front-end's item outstanding there) and B idle (its label-set reply)."""
    server = GatedServer({"CLIP_MODEL": str(bundled_dir), "CLIP_DEVICES": "cpu,cpu", "CLIP_IMAGE_MAX_BATCH": "1",
                          **SPLIT, "CLIP_WORKERS": "1"}, tmp_path).wait_ready()
    try:
        _, engines = layout(server)
        assert len(engines) == 2
        put = fresh("PUT", server.url + "/labelsets/both", json={"labels": ["red circle", "blue square"]})
        assert put.status_code == 200, put.text
        assert metric_value(server.metrics(), "clip_cache_entries", cache="labelset") == 2
        image = encode(shape_image("red", "circle"))
        entered = server.entered()
        server.hold()
        results: list = []
        threads = [threading.Thread(target=lambda: results.append(fresh(
            "POST", server.url + "/classify", files=[("file", ("x.png", image))], data={"labelset": "both"})))
            for _ in range(2)]
        for t in threads:
            t.start()
            server.wait_entered(entered + 1)  # the first is in an encoder before the second is sent
        server.wait_entered(entered + 2)
        server.release()
        for t in threads:
            t.join(60)
        assert [r.status_code for r in results] == [200, 200], [r.text for r in results]
        assert all(r.json()["results"][0][0]["label"] == "red circle" for r in results)
    finally:
        server.stop()


def test_no_process_outlives_a_killed_supervisor(bundled_dir, tmp_path):
    server = ServerProcess({"CLIP_MODEL": str(bundled_dir), **SPLIT}, tmp_path / "server.log").wait_ready()
    try:
        fronts, engines = layout(server)
        server.proc.kill()  # SIGKILL: no handler runs in the supervisor
        server.proc.wait(30)
        _wait(lambda: not any(_alive(pid) for pid in fronts + engines), "every child gone", server)
    finally:
        server.stop()


def test_a_killed_supervisor_leaves_its_port_free_and_no_temp_dir(bundled_dir, tmp_path):
    """SIGKILL the supervisor: its children go (their parent-death signal), the port is free for the restarted
    server, and the temp dir of sockets and metrics files (which the supervisor can no longer remove) is removed by
    the engine as it exits."""
    server = ServerProcess({"CLIP_MODEL": str(bundled_dir), **SPLIT}, tmp_path / "server.log").wait_ready()
    try:
        fronts, engines = layout(server)
        temp = Path(re.search(r"metrics in (\S+)", Path(server.log_path).read_text()).group(1)).parent
        assert temp.is_dir()
        server.proc.kill()
        server.proc.wait(30)
        _wait(lambda: not any(_alive(pid) for pid in fronts + engines), "every child gone", server)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.port), timeout=10).close()
        _wait(lambda: not temp.exists(), f"{temp} removed", server)
    finally:
        server.stop()


def test_the_children_of_a_killed_supervisor_drain_as_on_sigterm(bundled_dir, tmp_path):
    """SIGKILL the supervisor with a request in the (held) encoder: the front-end and the engine drain as when the
    supervisor stops them, so the request is still answered, and then they exit. (The kernel signals a child once per
    supervisor thread that goes; a front-end that took each as a SIGTERM would stop at the second without draining.)"""
    server = GatedServer({"CLIP_MODEL": str(bundled_dir), "CLIP_REQUEST_TIMEOUT_S": "60", **SPLIT,
                          "CLIP_WORKERS": "1"}, tmp_path).wait_ready()
    try:
        fronts, engines = layout(server)
        t, results = held_request(server, encode(shape_image("red", "circle")))
        server.proc.kill()
        server.proc.wait(30)
        _wait(lambda: Path(server.log_path).read_text(errors="replace").count("draining: refusing new work") == 2,
              "the front-end and the engine draining", server)
        since = time.monotonic()  # held past the 1.5 s that a front-end stopped without draining gives its requests
        _wait(lambda: time.monotonic() > since + 4, "4 s of draining", server)  # the condition itself
        server.release()
        t.join(60)
        assert results and results[0].status_code == 200, results and results[0].text
        _wait(lambda: not any(_alive(pid) for pid in fronts + engines), "every child gone", server)
    finally:
        server.stop()


def test_a_front_end_drains_once_however_often_the_supervisors_death_is_signalled():
    """The kernel sends the parent-death signal once per supervisor thread that goes (ZeroMQ's threads besides the
    main one): a front-end turns the first into one SIGTERM (a drain) and ignores the rest (a second SIGTERM would
    stop it without draining). Run in this process, with its signal handlers restored afterwards."""
    import os

    from service.supervisor import PARENT_DIED, drain_once

    terms: list[int] = []
    old = {sig: signal.signal(sig, handler) for sig, handler in ((signal.SIGTERM, lambda *_: terms.append(1)),
                                                                  (PARENT_DIED, drain_once))}
    try:
        for sent in (1, 2, 3):
            os.kill(os.getpid(), PARENT_DIED)
            until = time.monotonic() + 0.5
            while len(terms) < sent and time.monotonic() < until:  # handlers run between bytecodes: at once
                time.sleep(0.01)
        assert terms == [1], f"{len(terms)} SIGTERMs for 3 parent-death signals"
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def test_the_front_ends_deadline_is_the_engines(bundled_dir, tmp_path):
    """CLIP_REQUEST_TIMEOUT_S=2: a front-end takes the request's deadline, the engine enforces that one. With the
    encoder held past it, the one-image request queued behind the held batch is never encoded: 503
    deadline_exceeded, counted once."""
    timeout_s = 2.0
    server = GatedServer({"CLIP_MODEL": str(bundled_dir), "CLIP_REQUEST_TIMEOUT_S": str(timeout_s),
                          "CLIP_IMAGE_MAX_BATCH": "1", "CLIP_IMAGE_MAX_WAIT_MS": "1", **SPLIT}, tmp_path).wait_ready()
    try:
        image = encode(shape_image("red", "circle"))
        entered = server.entered()
        server.hold()
        results: dict = {}

        def send(name: str) -> None:
            results[name] = fresh("POST", server.url + "/embed/image", files=[("file", ("x.png", image))])

        first = threading.Thread(target=send, args=("first",))
        first.start()
        server.wait_entered(entered + 1)
        sent = time.monotonic()
        second = threading.Thread(target=send, args=("second",))
        second.start()
        _wait(lambda: metric_value(server.metrics(), "clip_queue_depth", modality="image") == 2, "second queued",
              server)
        _wait(lambda: time.monotonic() > sent + timeout_s + 0.5, "its deadline passed", server)  # the condition itself
        server.release()
        first.join(60)
        second.join(60)
        assert results["second"].status_code == 503, results["second"].text
        assert results["second"].json()["error"]["type"] == "deadline_exceeded"
        assert server.entered() == entered + 1, "the expired item was never encoded"
        assert metric_value(server.metrics(), "clip_rejected_total", reason="deadline") == 1
    finally:
        server.stop()


@pytest.fixture(scope="module")
def onnx_export_dir(bundled, bundled_dir, tmp_path_factory) -> Path:
    """The bundled model's fp32 ONNX export (as tests/export's fixture makes it)."""
    from export.onnx_export import OnnxOptions, export_onnx
    from export.source import source_spec

    out = tmp_path_factory.mktemp("split-onnx")
    export_onnx(bundled, source_spec(str(bundled_dir)), out, OnnxOptions())
    return out


def test_an_onnx_engine_behind_lean_front_ends(onnx_export_dir, server, tmp_path):
    """CLIP_BACKEND=onnx: the front-end tokenises with the export's own vocabulary file, named by the engine (a
    tokenizer rebuilt wrongly would change the ids, and the embeddings); its texts embed as the torch model's do,
    and only the engine maps ONNX Runtime."""
    split = ServerProcess({"CLIP_BACKEND": "onnx", "CLIP_EXPORT_DIR": str(onnx_export_dir), **SPLIT,
                           "CLIP_WORKERS": "1"}, tmp_path / "server.log").wait_ready()
    try:
        fronts, engines = layout(split)
        texts = {"texts": ["a red circle", "a photo of a blue square.", "Ünïcödé &amp; ascii"]}
        a = httpx.post(split.url + "/embed/text", json=texts, timeout=60)
        b = httpx.post(server.url + "/embed/text", json=texts, timeout=60)
        assert a.status_code == b.status_code == 200, (a.text, b.text)
        np.testing.assert_allclose(np.array(a.json()["embeddings"]), np.array(b.json()["embeddings"]), atol=1e-4)
        assert "onnxruntime" not in Path(f"/proc/{fronts[0]}/maps").read_text()
        assert "onnxruntime" in Path(f"/proc/{engines[0]}/maps").read_text()
    finally:
        split.stop()


def export_copy(onnx_export_dir: Path, to: Path, knees: dict[str, int] | None = None) -> Path:
    """A copy of the export of its own, whose cache holds `knees` for this host (None: no knees, a probe at warm-up)."""
    from export.batch_knee import KNEES_CACHE, cache_knees

    shutil.copytree(onnx_export_dir, to)
    (to / KNEES_CACHE).unlink(missing_ok=True)  # what another test's server remembered
    if knees:
        cache_knees(to, "cpu", knees)
    return to


def test_info_is_the_same_as_in_one_process(onnx_export_dir, tmp_path):
    """/info of a split server is one process's, batching.measured included (the knees, from the engine's status),
    for the same export: here knees remembered for this host, so neither server's measurement is noise."""
    export = export_copy(onnx_export_dir, tmp_path / "export", {"image": 4, "text": 8})
    env = {"CLIP_BACKEND": "onnx", "CLIP_EXPORT_DIR": str(export)}
    one = ServerProcess(env, tmp_path / "one.log")
    two = ServerProcess({**env, **SPLIT, "CLIP_WORKERS": "1"}, tmp_path / "split.log")
    try:
        infos = [httpx.get(s.wait_ready().url + "/info", timeout=30).json() for s in (one, two)]
    finally:
        one.stop()
        two.stop()
    measured = infos[0]["batching"]["measured"]
    assert {m: (c["max_batch"], c["source"]) for m, c in measured.items()} == {"image": (4, "cache"),
                                                                                "text": (8, "cache")}
    assert infos[1] == infos[0]


def test_info_shows_the_engines_warm_up_measurement(onnx_export_dir, tmp_path):
    """No knee known: the engine process times its towers at warm-up, and /info shows that curve, as the engine
    logged it."""
    export = export_copy(onnx_export_dir, tmp_path / "export")
    server = ServerProcess({"CLIP_BACKEND": "onnx", "CLIP_EXPORT_DIR": str(export), **SPLIT, "CLIP_WORKERS": "1"},
                           tmp_path / "server.log").wait_ready()
    try:
        batching = httpx.get(server.url + "/info", timeout=30).json()["batching"]
        log = server.log()
    finally:
        server.stop()
    logged = {m: ({int(n): r for n, r in re.findall(r"(\d+): ([\d.]+)", rates)}, int(cap)) for m, rates, cap in
              re.findall(r"(\w+) encoder items/s by batch size: (.*?) -> max batch (\d+)", log)}
    assert set(logged) == {"image", "text"}, log
    shown = {m: ({int(n): f"{r:.1f}" for n, r in c["items_per_s"].items()}, c["max_batch"])
             for m, c in batching["measured"].items()}
    assert shown == logged
    assert all(c["source"] == "warm-up" and c["items_per_s"] for c in batching["measured"].values())
    assert (batching["image_max_batch"], batching["text_max_batch"]) == (logged["image"][1], logged["text"][1])


def test_errors_are_the_same_as_in_one_process(split, server):
    """Errors raised in the engine process cross as their class and place: same status, same body."""
    good, bad = encode(shape_image("red", "circle")), b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
    data_uri = "data:image/png;base64," + __import__("base64").b64encode(bad).decode()
    cases = [("/embed/image", {"files": [("file", ("a.png", good)), ("file", ("b.png", bad))]}),
             ("/classify", {"files": [("file", ("a.png", good))], "data": {"labelset": "no-such-set"}}),
             ("/v1/embeddings", {"json": {"model": "clip", "input": ["a red circle", data_uri]}}),
             ("/classify", {"json": {"image": "x", "labels": ["a"] * 2}})]
    for path, kw in cases:
        a, b = httpx.post(split.url + path, timeout=60, **kw), httpx.post(server.url + path, timeout=60, **kw)
        assert (a.status_code, a.json()) == (b.status_code, b.json()), path
        assert 400 <= a.status_code < 500, a.text


def test_a_front_ends_engine_has_every_attribute_an_engine_has():
    """RemoteEngine runs Engine's own constructor: an attribute Engine sets (read by its shared request steps or by
    /info) is there in a front-end too. Only the batchers' caches stay in the engine process."""
    from concurrent.futures import ThreadPoolExecutor

    from service.engine import Engine
    from service.engine_client import RemoteEngine
    from service.engine_server import engine_info
    from service.metrics import Metrics
    from service.settings import Settings
    from tests.service.fake_backend import NamedBackend

    settings = Settings()
    with ThreadPoolExecutor(1) as inference:
        local = Engine(settings, NamedBackend(settings), Metrics(), inference)
        # what the pool says before an engine answers; engines on tcp:// (no temp dir): no ring
        no_heartbeat_yet = SimpleNamespace(info=lambda: None, directory=None)
        remote = RemoteEngine(settings, engine_info(local), pool=no_heartbeat_yet, metrics=Metrics())  # type: ignore
        try:
            missing = {a for a in vars(local) if not hasattr(remote, a)} - {"text_cache", "labelset_cache"}
            assert not missing, f"a front-end's engine lacks {sorted(missing)}"
            assert (remote.images.max_batch, remote.texts.max_batch) == (local.images.max_batch,
                                                                           local.texts.max_batch)
        finally:
            for eng in (local, remote):
                eng.preprocess_pool.shutdown(wait=False)


def test_the_least_loaded_pick_reads_the_load_of_every_reply():
    """An engine's queue load comes back with every reply, not only with the heartbeat: an engine's reply to a call
    says how many items it has queued, and after one from engine 0 saying 5, every pick is engine 1 (a pick on
    heartbeat loads, both 0, would alternate). Replies one loop iteration finished for one front-end leave as one
    message, and the front-end reads each of them."""
    import asyncio
    from types import SimpleNamespace

    from service.engine_client import EnginePool
    from service.engine_server import EngineServer
    from service.ipc import unpack_all
    from service.settings import Settings

    busy = SimpleNamespace(engine=SimpleNamespace(images=SimpleNamespace(depth=3), texts=SimpleNamespace(depth=2)))
    engine = EngineServer(Settings(), "ipc:///nonexistent", busy)  # type: ignore[arg-type]
    sent: list = []
    engine.sock = SimpleNamespace(send=sent.append)  # type: ignore[assignment]

    async def answer() -> None:
        engine._send(b"front-end", {"id": 1, "n": 4})
        engine._send(b"other", {"id": 7}, (np.ones((1, 2), np.float32),))
        engine._send(b"front-end", {"id": 2}, (np.arange(6, dtype=np.float32).reshape(2, 3),))
        await asyncio.sleep(0)  # the next loop iteration: the outbox leaves

    asyncio.run(answer())
    engine.ctx.term()
    assert [frames[0] for frames in sent] == [b"front-end", b"other"]  # one message per front-end
    (first, _), (second, out) = unpack_all(sent[0][1:])
    assert first == {"id": 1, "n": 4, "load": 5} and second == {"id": 2, "load": 5}
    assert out[0].tolist() == [[0, 1, 2], [3, 4, 5]]

    pool = EnginePool(["ipc:///nonexistent-0", "ipc:///nonexistent-1"])
    try:
        for link in pool.links:
            link.status = {"ready": True, "load": 0}  # as the last heartbeat said
        pool.links[0]._received(sent[0][1:])  # replies to two calls (nobody waits yet: kept for their callers)
        assert set(pool.links[0]._early) == {1, 2}
        assert pool.links[0].load == 5
        assert [pool.pick().index for _ in range(4)] == [1, 1, 1, 1]
    finally:
        pool.ctx.term()


def _remote_engine(settings, load: int, ops: list):
    """A front-end's RemoteEngine on a fake pool: its one engine link reports `load` items (these included) and
    records each call's op; decoding records itself in the same list."""
    from contextlib import asynccontextmanager

    from service.engine import Engine
    from service.engine_client import RemoteEngine
    from service.engine_server import engine_info
    from service.metrics import Metrics
    from tests.service.fake_backend import NamedBackend

    local = Engine(settings, NamedBackend(settings), Metrics(), None)  # type: ignore[arg-type]
    info = engine_info(local)
    local.preprocess_pool.shutdown(wait=False)

    async def call(header, arrays=(), rid=None):
        ops.append((header["op"], [a.shape for a in arrays]))
        return {}, [np.zeros((arrays[0].shape[0] if arrays else 0, 4), np.float32)]

    link = SimpleNamespace(load=load, call=call, new_id=lambda: 7, cancel=lambda rid: ops.append(("cancel", rid)))

    @asynccontextmanager
    async def charged(n):
        yield link

    pool = SimpleNamespace(info=lambda: None, charged=charged, directory=None)  # no ring: pixels travel as frames
    remote = RemoteEngine(settings, info, pool=pool, metrics=Metrics())  # type: ignore[arg-type]
    decode = remote.preprocess_images

    async def preprocess_images(images, deadline):
        ops.append(("decode", len(images)))
        return await decode(images, deadline)

    remote.preprocess_images = preprocess_images  # type: ignore[method-assign]
    return remote


@pytest.mark.parametrize("images, load, expected", [
    (1, 1, ["embed"]),  # one small image, an empty queue: decoded on the loop, then one trip with its pixels
    (1, 4, ["embed"]),  # half of CLIP_MAX_QUEUE=8, this image included: still one trip
    (1, 5, ["reserve", "decode", "pixels"]),  # fuller: room first, so a full queue answers before any decoding
    (2, 2, ["reserve", "decode", "pixels"]),  # several images: they count against the queue before decoding
    ("large", 1, ["reserve", "decode", "pixels"]),  # one image too large for the loop: decoded in the pool
])
def test_a_front_end_reserves_room_before_decoding_except_one_small_image(images, load, expected):
    """Images count against the engine's queue capacity from before they are decoded, as in one process; only a
    request's one small image, decoded on the loop, goes in one trip while the queue is at most half full."""
    import asyncio
    import io

    from PIL import Image

    from service.settings import Settings

    ops: list = []
    remote = _remote_engine(Settings(max_queue=8), load, ops)
    try:
        image = encode(shape_image("red", "circle"))
        if images == "large":
            buf = io.BytesIO()
            Image.new("RGB", (300, 300), (9, 99, 199)).save(buf, "PNG")
            batch = [buf.getvalue()]
        else:
            batch = [image] * images
        out = asyncio.run(remote.embed_images(batch))
        assert out.shape == (len(batch), 4)
        assert [op for op, *_ in ops] == expected
        pixels = next(shapes for op, shapes in ops if op in ("embed", "pixels"))
        assert pixels == [(len(batch), 8, 8, 3)]  # uint8 [n, H, W, 3], the engine normalises
    finally:
        remote.preprocess_pool.shutdown(wait=False)


def test_a_front_end_decodes_a_requests_one_small_image_on_its_event_loop():
    """One image of at most 256 x 256 pixels (or twice the model input's, if more) is decoded on the front-end's
    event loop, not handed to its pool (whose hand-off cost as much CPU as the decode); a larger one, or several, go
    to the pool. Inline, the pixels, the errors and the deadline's 503 are the pool's."""
    import asyncio
    import io
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    from service.engine import Engine
    from service.engine_client import inline_decode_cap
    from service.errors import BadInput, DeadlineExceeded
    from service.settings import Settings

    class CountingPool(ThreadPoolExecutor):
        submitted = 0

        def submit(self, *args, **kwargs):
            self.submitted += 1
            return super().submit(*args, **kwargs)

    def png(side: int) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (side, side), (200, 30, 60)).save(buf, "PNG")
        return buf.getvalue()

    remote = _remote_engine(Settings(), 1, [])
    remote.preprocess_pool.shutdown(wait=False)
    assert remote.inline_decode_pixels == 256 * 256 and Engine.inline_decode_pixels == 0  # one process: the pool
    assert inline_decode_cap((336, 336)) == 2 * 336 * 336  # a larger model input: twice its pixels
    small, large = png(256), png(257)  # around the cap

    def submitted(images: list[bytes], late: bool = False) -> int:
        remote.preprocess_pool = CountingPool(2)
        try:
            async def run():
                deadline = asyncio.get_running_loop().time() + (-1 if late else 30)
                out = await remote.preprocess_images(images, deadline)
                assert [a.tobytes() for a in out] == [remote.preprocessor(b).tobytes() for b in images]
            asyncio.run(run())
            return remote.preprocess_pool.submitted
        finally:
            remote.preprocess_pool.shutdown(wait=False)

    assert submitted([small]) == 0
    assert submitted([large]) == 1
    assert submitted([small, small]) == 2
    with pytest.raises(BadInput) as err:
        submitted([b"not an image"])
    assert err.value.index is None and "not a decodable image" in err.value.message
    before = remote.metrics.rejected.labels("deadline")._value.get()
    with pytest.raises(DeadlineExceeded):
        submitted([small], late=True)
    assert remote.metrics.rejected.labels("deadline")._value.get() == before + 1


def test_an_engine_takes_room_for_images_sent_in_one_trip_or_refuses_them():
    """`embed` (decoded images in one trip): embedded when the queue has room; 503 when it is full, 413 when the
    request could never fit: the engine's capacity is exact whichever way the images came."""
    import asyncio

    from service.engine import Engine
    from service.engine_server import EngineServer, install_pixel_encoder
    from service.errors import Overloaded, PayloadTooLarge
    from service.metrics import Metrics
    from service.settings import Settings
    from tests.service.fake_backend import NamedBackend

    async def scenario() -> None:
        from concurrent.futures import ThreadPoolExecutor

        settings = Settings(max_queue=3)
        with ThreadPoolExecutor(1) as inference:
            engine = Engine(settings, NamedBackend(settings), Metrics(), inference)
            install_pixel_encoder(engine)
            engine.start()
            server = EngineServer(settings, "ipc:///nonexistent", SimpleNamespace(require_engine=lambda: engine))
            try:
                pixels = np.full((2, 8, 8, 3), 200, np.uint8)
                _, (out,) = await server.op_embed(b"f", 1, {"deadline": engine.deadline()}, [pixels])
                assert out.shape == (2, engine.backend.embed_dim)
                assert np.allclose(np.linalg.norm(out, axis=1), 1.0)
                with pytest.raises(PayloadTooLarge):
                    await server.op_embed(b"f", 2, {"deadline": engine.deadline()}, [np.zeros((4, 8, 8, 3), np.uint8)])
                with engine.images.reserve(2):  # the queue is 2 of 3 full: 2 more do not fit
                    with pytest.raises(Overloaded):
                        await server.op_embed(b"f", 3, {"deadline": engine.deadline()}, [pixels])
                    assert engine.images.depth == 2  # the refusal took no room
                assert engine.images.depth == 0  # and the embedded images gave theirs back
            finally:
                await engine.stop()
                server.ctx.term()
                engine.preprocess_pool.shutdown(wait=False)

    asyncio.run(scenario())


def test_an_untraced_embed_is_answered_without_a_task_as_op_embed_answers_it():
    """`embed` without a traceparent (most calls) runs no task and no coroutine in the engine (`_embed_now`): its
    answer is op_embed's (the same rows; 503 when the queue is full, taking no room), a `cancel` drops its queued
    items and sends nothing, and a drain waits for it. With a traceparent it is op_embed in a task, as before."""
    import asyncio

    from service.engine import Engine
    from service.engine_server import EngineServer, install_pixel_encoder
    from service.metrics import Metrics
    from service.settings import Settings
    from tests.service.fake_backend import NamedBackend

    async def scenario() -> None:
        from concurrent.futures import ThreadPoolExecutor

        settings = Settings(max_queue=3, image_max_wait_ms=200)
        with ThreadPoolExecutor(1) as inference:
            engine = Engine(settings, NamedBackend(settings), Metrics(), inference)
            install_pixel_encoder(engine)
            engine.start()
            lifecycle = SimpleNamespace(require_engine=lambda: engine, inflight_requests=0)
            server = EngineServer(settings, "ipc:///nonexistent", lifecycle)
            sent: list = []
            server._send = lambda ident, header, arrays=(): sent.append((header, arrays))  # type: ignore
            try:
                pixels = np.full((2, 8, 8, 3), 200, np.uint8)
                deadline = engine.deadline()
                server._dispatch(b"f", {"op": "embed", "id": 1, "deadline": deadline}, [pixels])
                waiting = server.tasks[(b"f", 1)]
                assert not isinstance(waiting, asyncio.Task) and lifecycle.inflight_requests == 1
                await asyncio.wait_for(asyncio.shield(waiting), 20)
                await asyncio.sleep(0)
                _, (want,) = await server.op_embed(b"f", 9, {"deadline": deadline}, [pixels])
                (header, (got,)), = sent
                assert header == {"id": 1} and np.array_equal(got, want)
                assert lifecycle.inflight_requests == 0 and not server.tasks

                sent.clear()
                with engine.images.reserve(2):  # 2 of 3 taken: 2 more are refused at once, taking nothing
                    server._dispatch(b"f", {"op": "embed", "id": 2, "deadline": deadline}, [pixels])
                    assert engine.images.depth == 2 and not server.tasks
                (header, _), = sent
                assert header["id"] == 2 and header["error"] == "Overloaded"

                sent.clear()
                dropped = engine.metrics.dropped.labels("image")._value.get()
                server._dispatch(b"f", {"op": "embed", "id": 3, "deadline": deadline}, [pixels[:1]])
                server._dispatch(b"f", {"op": "cancel", "id": 3}, [])  # queued, waiting out the 200 ms window
                for _ in range(100):
                    await asyncio.sleep(0.02)
                    if engine.images.depth == 0:
                        break
                assert sent == [] and not server.tasks and lifecycle.inflight_requests == 0
                assert engine.images.depth == 0
                assert engine.metrics.dropped.labels("image")._value.get() == dropped + 1

                traced = {"op": "embed", "id": 4, "deadline": deadline,
                          "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
                server._dispatch(b"f", traced, [pixels[:1]])
                assert isinstance(server.tasks[(b"f", 4)], asyncio.Task)
                await asyncio.wait_for(asyncio.shield(server.tasks[(b"f", 4)]), 20)
            finally:
                await engine.stop()
                server.ctx.term()
                engine.preprocess_pool.shutdown(wait=False)

    asyncio.run(scenario())
