"""The knee of a batch-size curve, and the record of one in manifest.json: shared by `python -m export bench
--record` and the server's warm-up probe (service/batch_probe.py). Imports neither torch nor onnxruntime.

The knee is the smallest batch within KNEE_SHARE of the best items/s: nearly all of the throughput at the lowest
latency a batch costs. A knee holds for the machine it was measured on, so a recorded one names its host, and the
server uses it only on the same host (same CPU model and core count; on CUDA, the same GPU model too).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Optional

from export.manifest import Manifest

log = logging.getLogger(__name__)

KNEE_SHARE = 0.95  # a batch that reaches 95% of the best items/s is big enough: larger ones add latency, not speed


def knee(items_per_s: dict[int, float], share: float = KNEE_SHARE) -> int:
    """The smallest batch size whose items/s reaches `share` of the best measured."""
    best = max(items_per_s.values())
    return min(n for n, rate in items_per_s.items() if rate >= share * best)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores() -> int:
    """Cores this process may use (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def _gpu_model() -> str:
    """The first GPU's name from nvidia-smi (no CUDA library loaded), or "" when there is none to ask."""
    if not shutil.which("nvidia-smi"):
        return ""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.strip().splitlines()[0] if out.strip() else ""


def host_id(device: str) -> str:
    """What a knee depends on besides the model: the CPU (model, cores this process may use) and, on CUDA, the GPU."""
    host = f"{cpu_model()} x{cores()}"
    return f"{host}; {_gpu_model()}" if device == "cuda" else host


def with_knees(manifest: Manifest, device: str, curves: dict[str, dict[int, float]]) -> Manifest:
    """The manifest with the knee of each tower's curve (tower -> batch -> items/s) recorded for this host."""
    record = {"host": host_id(device), "knee_share": KNEE_SHARE,
              **{tower: {"max_batch": knee(curve), "items_per_s": {str(n): round(r, 1) for n, r in curve.items()}}
                 for tower, curve in curves.items()}}
    return replace(manifest, batch_knees={**(manifest.batch_knees or {}), device: record})


def recorded_knees(manifest: Manifest, device: str) -> dict[str, int]:
    """tower -> max batch recorded for `device` on this host; {} when none was, or on another host."""
    record = (manifest.batch_knees or {}).get(device)
    if not record or record.get("host") != host_id(device):
        return {}
    return {t: int(record[t]["max_batch"]) for t in ("image", "text") if t in record}


KNEES_CACHE = Path("cache") / "batch_knees.json"  # under an export directory, beside verified.json


def cached_knees(export_dir: Path | str, device: str, budget_s: float = float("inf")) -> dict[str, int]:
    """tower -> max batch an earlier start's warm-up probe measured for `device` on this host; {} when none did.

    The probe delays readiness by up to CLIP_BATCH_PROBE_S; remembering its knees means a restart on the same host
    (the usual case: a container restarted, a pod rescheduled on the same machine type) is ready without it. A knee
    from a probe that its budget cut short is used too, unless this start has a larger budget (`budget_s`) than that
    probe had: then it measures again, further."""
    record = _cached_record(export_dir, device)
    cut_short = record.get("partial") or {}  # tower -> the budget its probe ran out of
    return {t: int(record[t]) for t in ("image", "text") if isinstance(record.get(t), int) and record[t] > 0
            and not (isinstance(cut_short, dict) and float(cut_short.get(t, budget_s)) < budget_s)}


def cached_partial(export_dir: Path | str, device: str) -> set[str]:
    """The towers whose remembered knee came from a probe that its time budget cut short."""
    partial = _cached_record(export_dir, device).get("partial")
    return set(partial) if isinstance(partial, dict) else set()


def _cached_record(export_dir: Path | str, device: str) -> dict:
    """The export cache's record for `device` if an earlier start on this host wrote it; {} otherwise (none, another
    host's, or unreadable)."""
    try:
        record = json.loads((Path(export_dir) / KNEES_CACHE).read_text()).get(device)
    except (OSError, ValueError, AttributeError):
        return {}
    return record if isinstance(record, dict) and record.get("host") == host_id(device) else {}


def cache_knees(export_dir: Path | str, device: str, knees: dict[str, int],
                partial: Optional[dict[str, float]] = None) -> None:
    """Remember a probe's knees for this host (`partial`: tower -> budget, for probes that budget cut short); a
    read-only export directory just means the next start probes again."""
    from export.cache_files import write_atomic

    path = Path(export_dir) / KNEES_CACHE
    try:
        old = json.loads(path.read_text()) if path.exists() else {}
        old = old if isinstance(old, dict) else {}
    except (OSError, ValueError):
        old = {}
    mine = old.get(device) if isinstance(old.get(device), dict) and old[device].get("host") == host_id(device) else {}
    kept_partial = {t: b for t, b in (mine.get("partial") or {}).items() if t not in knees}
    record = {**mine, "host": host_id(device), **knees, "partial": {**kept_partial, **(partial or {})}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({**old, device: record}, indent=1).encode())
    except OSError as exc:
        log.info("batch knees not remembered in %s: %s", path, exc)
