"""The real server (`python -m service`) in a child process on a loopback port, with memory and metrics probes.

The tests start their servers with the same class (tests/service/server.py)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status_kib(pid: int, field: str) -> int | None:
    """A `/proc/<pid>/status` field in KiB (VmRSS, VmHWM), or None off Linux."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (/proc/<pid>/stat), or None off Linux."""
    try:
        return stat_cpu_seconds(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, ValueError, IndexError):
        return None


def stat_cpu_seconds(stat: str) -> float:
    """User + system CPU seconds from the text of a /proc/<pid>/stat or /proc/<pid>/task/<tid>/stat file."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Every live descendant of a process (/proc), or [] off Linux."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue  # a process that ended while we looked
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU time of a process and its live descendants (a server that runs worker processes), or None off Linux."""
    own = cpu_seconds(pid)
    if own is None:
        return None
    return own + sum(cpu_seconds(c) or 0.0 for c in children(pid))


def gpu_memory_mib(pid: int) -> int | None:
    """Device memory the process holds now (nvidia-smi), or None without an NVIDIA GPU."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    used = [int(m) for p, m in (line.split(",") for line in out.strip().splitlines() if "," in line)
            if p.strip() == str(pid)]
    return sum(used) if used else 0


class MemoryProbe:
    """Samples the server's peak RSS (VmHWM, reset per scenario when the kernel allows) and GPU memory."""

    def __init__(self, pid: int, every_s: float = 0.5):
        self.pid, self.every_s = pid, every_s
        self.peak_gpu_mib: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "MemoryProbe":
        try:  # "5" resets VmHWM to the current RSS (Linux >= 4.0): the peak is then this scenario's own
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            pass
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.every_s):
            used = gpu_memory_mib(self.pid)
            if used is not None:
                self.peak_gpu_mib = max(self.peak_gpu_mib or 0, used)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)

    @property
    def peak_rss_mib(self) -> float | None:
        hwm = proc_status_kib(self.pid, "VmHWM")
        return round(hwm / 1024, 1) if hwm is not None else None


class BenchServer:
    """`python -m service` with CLIP_* settings from `env` (CLIP_THREADS defaults to all cores)."""

    def __init__(self, env: dict[str, str], log_path: Path, cmd: list[str] | None = None, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # default settings otherwise (access log lines included): the numbers are what a user gets
        full_env = {**os.environ, "CLIP_HOST": "127.0.0.1", "CLIP_PORT": str(self.port), "PYTHONUNBUFFERED": "1",
                    **env}
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd or [sys.executable, "-m", "service"], cwd=ROOT, env=full_env, stdout=self._log,
                                     stderr=subprocess.STDOUT)

    def __enter__(self) -> "BenchServer":
        return self.wait_ready()

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_ready(self, timeout: float = 300.0) -> "BenchServer":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def metrics(self, attempts: int = 5) -> str:
        """The /metrics text; retried, since a loaded 2-core machine can be slow to answer right after a point."""
        for attempt in range(attempts):
            try:
                return httpx.get(self.url + "/metrics", timeout=30).text
            except httpx.HTTPError:
                if attempt == attempts - 1:
                    raise
                time.sleep(1)
        raise AssertionError("unreachable")

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Until no image or text item is queued or in flight (cancelled load drains first)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.metrics()
            if metric(text, "clip_queue_depth", modality="image") == 0 and \
                    metric(text, "clip_queue_depth", modality="text") == 0:
                return True
            time.sleep(0.1)
        return False

    def tree_cpu_seconds(self) -> float | None:
        """The server's CPU time with its worker processes' (CLIP_WORKERS)."""
        return tree_cpu_seconds(self.proc.pid)

    def memory(self) -> MemoryProbe:
        return MemoryProbe(self.proc.pid)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


# --- Prometheus text ----------------------------------------------------------------------------------------
def samples(text: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of `name` whose labels include `labels`, as (labels, value)."""
    out = []
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric_name, _, rest = head.partition("{")
        if metric_name != name:
            continue
        got = dict(kv.split("=", 1) for kv in rest.rstrip("}").split(",") if "=" in kv)
        got = {k: v.strip('"') for k, v in got.items()}
        if all(got.get(k) == v for k, v in labels.items()):
            out.append((got, float(value)))
    return out


def metric(text: str, name: str, **labels: str) -> float:
    return sum(v for _, v in samples(text, name, **labels))


def batch_histogram(before: str, after: str, modality: str = "image") -> dict[str, int]:
    """Encoder calls per batch-size bucket between two /metrics scrapes: {"1": n, "2": n, "3-4": n, ...}."""
    def cumulative(text: str) -> dict[float, float]:
        return {float(lab["le"]): v for lab, v in samples(text, "clip_batch_size_bucket", modality=modality)}

    a, b = cumulative(before), cumulative(after)
    out, prev_edge, prev_count = {}, 0.0, 0.0
    for edge in sorted(e for e in b if e != float("inf")):
        count = b[edge] - a.get(edge, 0.0)
        lo = int(prev_edge) + 1
        label = str(int(edge)) if lo >= int(edge) else f"{lo}-{int(edge)}"
        out[label] = int(round(count - prev_count))
        prev_edge, prev_count = edge, count
    return {k: v for k, v in out.items() if v}


def mean_batch(before: str, after: str, modality: str = "image") -> float | None:
    calls = metric(after, "clip_batch_size_count", modality=modality) - \
        metric(before, "clip_batch_size_count", modality=modality)
    items = metric(after, "clip_batch_size_sum", modality=modality) - \
        metric(before, "clip_batch_size_sum", modality=modality)
    return round(items / calls, 2) if calls else None
