"""Where the numbers were measured: CPU, cores, memory, GPU, library versions, and how busy the machine was."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from typing import Any

from export.batch_knee import cores, cpu_model  # noqa: F401 - one reading of the CPU for knees and reports

PACKAGES = ("torch", "onnxruntime", "onnxruntime-gpu", "open_clip_torch", "fastapi", "uvicorn", "httpx", "pillow",
            "numpy", "orjson")


def memory_gib() -> float | None:
    try:
        for line in open("/proc/meminfo", encoding="utf-8"):
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 ** 2, 1)
    except OSError:
        pass
    return None


def load_average() -> list[float]:
    """1, 5 and 15-minute load averages: how quiet the machine was when a measurement started."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have been busy since boot (/proc/stat), or None off Linux."""
    try:
        fields = [int(x) for x in open("/proc/stat", encoding="utf-8").readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """How many cores *other* processes kept busy during a block: machine busy time minus ours.

    `ours()` returns the CPU seconds our processes used so far (this one, plus a server child if any).
    """

    def __init__(self, ours):
        self.ours = ours
        self.cores: float | None = None

    def __enter__(self) -> "OtherLoad":
        import time

        self._t, self._busy, self._ours = time.perf_counter(), busy_cpu_seconds(), self.ours()
        return self

    def __exit__(self, *exc) -> None:
        import time

        busy, ours = busy_cpu_seconds(), self.ours()
        if None in (busy, ours, self._busy, self._ours):
            return
        elapsed = time.perf_counter() - self._t
        self.cores = round(max(0.0, (busy - self._busy) - (ours - self._ours)) / max(elapsed, 1e-9), 2)


def own_cpu_seconds() -> float:
    import time

    return time.process_time()


def gpu() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return f"{props.name} ({props.total_memory / 1024 ** 3:.0f} GiB)"
    except Exception:  # noqa: BLE001 - no torch/CUDA means no GPU to describe
        pass
    return None


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def describe() -> dict[str, Any]:
    """One dict for the results JSON."""
    return {"cpu": cpu_model(), "cores": cores(), "memory_gib": memory_gib(), "gpu": gpu(),
            "platform": platform.platform(), "load_average_at_start": load_average(), "versions": versions(),
            "git_commit": git_commit()}


def summary(m: dict[str, Any]) -> str:
    """One line for the console and the docs."""
    gpu_part = f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"
    return (f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB RAM{gpu_part}; "
            f"load average at start {m['load_average_at_start']}")
