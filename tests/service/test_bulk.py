"""`clip-serve embed` (service/bulk/) end to end: the real command in a child process against real servers."""

from __future__ import annotations

import http.server
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.service.conftest import shape_image
from tests.service.gated import GatedServer
from tests.service.server import ROOT

COLOURS = ("red", "blue", "green", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "star", "cross", "heart")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """120 rendered PNGs in two levels of folders."""
    root = tmp_path_factory.mktemp("images")
    for i in range(120):
        sub = root / ("more" if i % 4 == 0 else "")
        sub.mkdir(exist_ok=True)
        shape_image(COLOURS[i % 6], SHAPES[(i // 6) % 6], seed=i).save(sub / f"{i:03d}.png")
    return root


def embed(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", "embed", "--quiet", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def read(out: Path) -> dict[str, np.ndarray]:
    """source -> vector of a parquet output, read the way the README says."""
    table = pq.read_table(out)
    return dict(zip(table.column("source").to_pylist(), np.stack(table.column("embedding").to_numpy(
        zero_copy_only=False))))


def direct(server, paths: list[Path]) -> np.ndarray:
    r = httpx.post(server.url + "/embed/image", files=[("file", (p.name, p.read_bytes())) for p in paths], timeout=60)
    return np.asarray(r.json()["embeddings"], dtype=np.float32)


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for source in a:  # row by row; batches differ between runs, so allow float noise
        assert np.allclose(a[source], b[source], atol=1e-5), source


def test_a_folder_becomes_a_parquet_table_of_the_servers_embeddings(server, folder, tmp_path):
    out = tmp_path / "vectors.parquet"
    done = embed(str(folder), "--server", server.url, "--out", str(out), "--group-size", "32", "--batch-size", "8")
    assert done.returncode == 0, done.stderr
    table = pq.read_table(out)  # one call reads the whole directory of parts
    info = httpx.get(server.url + "/info").json()
    assert table.num_rows == 120 and len(list(out.glob("part-*.parquet"))) == 4  # 32 + 32 + 32 + 24
    assert str(table.schema.field("embedding").type) == "fixed_size_list<element: float>[128]"
    assert set(table.column("model").to_pylist()) == {info["model"]}
    assert set(table.column("fingerprint").to_pylist()) == {info["fingerprint"]}
    rows = read(out)
    some = sorted(folder.rglob("*.png"))[:5]
    assert np.allclose(np.stack([rows[str(p)] for p in some]), direct(server, some), atol=1e-5)
    assert "120 embedded" in done.stderr and not (tmp_path / "vectors.errors.csv").exists()


@pytest.mark.parametrize("fmt", ["parquet", "npy"])
def test_a_crashed_run_resumes_to_the_same_result_as_an_uninterrupted_one(server, folder, tmp_path, fmt):
    common = ["--server", server.url, "--group-size", "16", "--batch-size", "4", "--concurrency", "3"]
    whole, resumed = tmp_path / f"whole.{fmt}", tmp_path / f"resumed.{fmt}"
    assert embed(str(folder), "--out", str(whole), *common).returncode == 0

    crashed = embed(str(folder), "--out", str(resumed), *common, "--crash-after-groups", "2")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr  # killed, as a power cut would: no clean-up
    second = embed(str(folder), "--out", str(resumed), *common)
    assert second.returncode == 0, second.stderr
    assert "32 already done, 88 to embed" in second.stderr, "the rerun skipped exactly the committed groups"
    if fmt == "parquet":
        assert_same(read(whole), read(resumed))
    else:
        assert_same(npy_rows(whole), npy_rows(resumed))
    third = embed(str(folder), "--out", str(resumed), *common)
    assert "120 already done, 0 to embed" in third.stderr and "0 embedded" in third.stderr


def npy_rows(out: Path) -> dict[str, np.ndarray]:
    import csv

    matrix = np.load(out)
    with open(out.with_suffix(".index.csv"), newline="") as f:
        index = list(csv.DictReader(f))
    assert matrix.dtype == np.float32 and matrix.shape == (len(index), 128)
    assert [int(r["row"]) for r in index] == list(range(len(index)))
    return {r["source"]: matrix[int(r["row"])] for r in index}


def test_ctrl_c_writes_what_was_computed_and_the_rerun_finishes(bundled_dir, folder, tmp_path):
    """The server lets three encoder calls through and holds the fourth (tests/service/gated.py), so the run is
    surely mid-way when Ctrl-C comes, however fast the machine runs its 60 requests."""
    out = tmp_path / "v.parquet"
    args = [sys.executable, "-m", "service.cli", "embed", "--quiet", str(folder), "--server", "", "--out",
            str(out), "--group-size", "1000", "--batch-size", "2", "--concurrency", "1"]
    server = GatedServer({"CLIP_MODEL": str(bundled_dir)}, tmp_path / "gated").wait_ready()
    try:
        args[args.index("--server") + 1] = server.url
        first = server.entered()
        server.hold()
        server.allow(first + 3)
        # SIGINT as in a terminal: a shell running the tests in the background (nohup, `make test &`, some CI
        # runners) ignores it, and a child would inherit that and never see the Ctrl-C
        proc = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 120
        while server.entered() < first + 4:  # three requests answered, the fourth held in the encoder
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be interrupted"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130 and "interrupted" in err, err
        kept = pq.read_table(out).num_rows
        assert 0 < kept < 120, "rows computed before Ctrl-C were written although no group of 1000 was full"
        server.release()
        rerun = embed(str(folder), "--server", server.url, "--out", str(out))
        assert rerun.returncode == 0 and f"{kept} already done" in rerun.stderr
        assert pq.read_table(out).num_rows == 120
    finally:
        server.stop()


def test_unreadable_and_corrupt_files_are_recorded_and_the_run_goes_on(server, folder, tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    good = sorted(folder.glob("*.png"))[:6]
    for p in good:
        (mixed / p.name).write_bytes(p.read_bytes())
    (mixed / "corrupt.jpg").write_bytes(b"not an image at all")
    (mixed / "truncated.png").write_bytes(good[0].read_bytes()[:60])
    out = tmp_path / "v.parquet"
    done = embed(str(mixed), "--server", server.url, "--out", str(out), "--batch-size", "4")
    assert done.returncode == 0, done.stderr
    rows = read(out)
    assert sorted(rows) == sorted(str(mixed / p.name) for p in good)
    assert np.allclose(np.stack([rows[str(mixed / p.name)] for p in good]), direct(server, good), atol=1e-5)
    errors = (tmp_path / "v.errors.csv").read_text()
    assert errors.startswith("source,status,type,message")
    for name in ("corrupt.jpg", "truncated.png"):
        assert f"{mixed / name},400,invalid_input," in errors, errors
    assert "2 failed" in done.stderr
    again = embed(str(mixed), "--server", server.url, "--out", str(out))
    assert "6 already done, 2 to embed" in again.stderr, "failed items are not done: a rerun tries them again"


class SwitchingProxy:
    """A loopback HTTP proxy that forwards to one server, then, after `after` embedding requests, to another: a
    server whose model changes in the middle of a run, as behind a load balancer during a rolling deploy."""

    def __init__(self, first: str, second: str, after: int):
        self.targets, self.after, self.forwarded = [first, second], after, 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.path.startswith("/embed"):
                    proxy.forwarded += 1
                target = proxy.targets[proxy.forwarded > proxy.after]
                r = httpx.request(self.command, target + self.path, content=body, timeout=60,
                                  headers={"content-type": self.headers.get("content-type", "")})
                self.send_response(r.status_code)
                self.send_header("content-type", r.headers.get("content-type", ""))
                self.send_header("content-length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            do_GET = do_POST = _forward

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_fingerprint_change_midway_stops_the_run_and_a_resume_against_it_is_refused(server, other_server, folder,
                                                                                      tmp_path):
    out = tmp_path / "v.parquet"
    proxy = SwitchingProxy(server.url, other_server.url, after=10)
    try:
        done = embed(str(folder), "--server", proxy.url, "--out", str(out), "--group-size", "8", "--batch-size", "4",
                     "--concurrency", "1")
    finally:
        proxy.close()
    first = httpx.get(server.url + "/info").json()["fingerprint"]
    second = httpx.get(other_server.url + "/info").json()["fingerprint"]
    assert done.returncode == 1 and "stopped" in done.stderr and first in done.stderr and second in done.stderr
    table = pq.read_table(out)
    assert table.num_rows == 40, "the 10 requests answered by the first model were written, nothing after"
    assert set(table.column("fingerprint").to_pylist()) == {first}

    refused = embed(str(folder), "--server", other_server.url, "--out", str(out))
    assert refused.returncode == 1 and "resume against the same model" in refused.stderr
    assert pq.read_table(out).num_rows == 40
    finished = embed(str(folder), "--server", server.url, "--out", str(out))
    assert finished.returncode == 0 and pq.read_table(out).num_rows == 120


def test_texts_from_a_file(server, tmp_path):
    texts = ["a red circle", "a blue square", "a green star", "a red circle"]  # the repeat is embedded once
    (tmp_path / "captions.txt").write_text("\n".join(texts) + "\n")
    out = tmp_path / "t.npy"
    done = embed("--texts", str(tmp_path / "captions.txt"), "--server", server.url, "--out", str(out))
    assert done.returncode == 0, done.stderr
    rows = npy_rows(out)
    ref = httpx.post(server.url + "/embed/text", json={"texts": texts[:3]}).json()["embeddings"]
    assert list(rows) == texts[:3] and np.allclose(np.stack(list(rows.values())), ref, atol=1e-5)


@pytest.fixture
def http_folder(folder):
    """The image folder served over plain HTTP on loopback (what a list of image URLs points at)."""
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(folder), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_a_csv_of_paths_and_urls(server, folder, http_folder, tmp_path):
    """Relative paths resolve against the list's folder; URLs are downloaded by the command (--fetch client, the
    default); a missing file and a 404 are per-row errors."""
    names = ["001.png", "002.png", "003.png"]  # in the top folder
    listing = tmp_path / "list" / "images.csv"
    listing.parent.mkdir()
    (tmp_path / "list" / "local").symlink_to(folder)
    rows = ["id,image", "1,local/001.png", f"2,{http_folder}/002.png", f"3,{http_folder}/003.png",
            "4,local/missing.png", f"5,{http_folder}/missing.png"]
    listing.write_text("\n".join(rows) + "\n")
    out = tmp_path / "v.parquet"
    done = embed(str(listing), "--column", "image", "--server", server.url, "--out", str(out))
    assert done.returncode == 0, done.stderr
    got = read(out)
    sources = ["local/001.png", f"{http_folder}/002.png", f"{http_folder}/003.png"]
    assert sorted(got) == sorted(sources), "sources are the rows as written"
    assert np.allclose(np.stack([got[s] for s in sources]), direct(server, [folder / n for n in names]), atol=1e-5)
    errors = (tmp_path / "v.errors.csv").read_text()
    assert "local/missing.png,,read_error" in errors and "missing.png,,read_error,OSError: HTTP 404" in errors


def test_urls_sent_to_a_server_without_url_fetching_fail_per_row_with_its_message(server, tmp_path):
    listing = tmp_path / "urls.txt"
    listing.write_text("https://img.example.com/a.jpg\nhttps://img.example.com/b.jpg\n")
    out = tmp_path / "v.parquet"
    done = embed(str(listing), "--fetch", "server", "--server", server.url, "--out", str(out))
    assert done.returncode == 0 and "2 failed" in done.stderr, done.stderr
    errors = (tmp_path / "v.errors.csv").read_text()
    assert errors.count("image URLs are off on this server") == 2 and errors.count(",400,invalid_input,") == 2


def test_arguments_that_name_nothing_are_usage_errors(tmp_path):
    done = embed(str(tmp_path / "nowhere"), "--out", str(tmp_path / "v.parquet"))
    assert done.returncode == 2 and "no such file or folder" in done.stderr
    done = embed(str(tmp_path / "*.png"), "--out", str(tmp_path / "v.parquet"))
    assert done.returncode == 2 and "matches nothing" in done.stderr
    (tmp_path / "notes.md").write_text("no images here")
    done = embed(str(tmp_path), "--out", str(tmp_path / "v.parquet"))
    assert done.returncode == 2 and "nothing to embed there" in done.stderr and ".jpg" in done.stderr


def test_clip_serve_lists_embed(capsys):
    from service import cli

    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "embed" in capsys.readouterr().out
