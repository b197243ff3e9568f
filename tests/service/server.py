"""Start the real server (`python -m service`, uvicorn) on a free loopback port for tests.

The process harness is the benchmark's (bench/server.py); tests pin CLIP_THREADS=2 and wait up to 3 minutes."""

from __future__ import annotations

from pathlib import Path

from bench.server import BenchServer, free_port, metric

ROOT = Path(__file__).resolve().parents[2]
__all__ = ["ROOT", "ServerProcess", "free_port", "metric_value"]


class ServerProcess(BenchServer):
    """A `python -m service` child process with CLIP_* settings from `env`."""

    def __init__(self, env: dict[str, str], log_path: Path, port: int | None = None):
        super().__init__({"CLIP_THREADS": "2", **env}, log_path, port=port)

    def wait_ready(self, timeout: float = 180.0) -> "ServerProcess":
        super().wait_ready(timeout)
        return self


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` in a Prometheus exposition."""
    return metric(text, name, **labels)
