"""Encoder throughput per batch size: eager PyTorch vs the exported graphs (not a test; numbers for docs).

    python -m export bench exports/vit-b-32 [--device cpu] [--batch-sizes 1,8,32,64] [--json out.json]
    python -m export bench exports/vit-b-32 --compare exports/vit-b-32-int8 --backends onnx --rounds 6
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from export.batch_knee import cpu_model
from export.errors import ExportError
from export.manifest import Manifest, SourceSpec, load_tokenizer, read_manifest
from export.runtime import Towers, load_encoders
from export.runtime.eager import TorchTowers
from export.source import eager_model_for, load_source

log = logging.getLogger(__name__)

Encode = Callable[[np.ndarray], np.ndarray]  # numpy batch in, float32 [B, D] out


@dataclass
class BenchRow:
    tower: str  # "image" | "text"
    backend: str  # "torch" (eager) | "onnx" | "tensorrt" | "onnx-int8" (a --compare export of that precision)
    batch: int
    items_per_s: float  # from the fastest call: the least disturbed by other processes
    items_per_s_median: float  # from the median call
    ms_per_batch: float  # median call
    calls: int  # timed calls, all rounds together
    runs: str  # what actually ran (providers / device)


def cpu_count() -> int:
    """Cores this process may use (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity masks
        return os.cpu_count() or 1


def time_calls(encode: Encode, x: np.ndarray, seconds: float, min_calls: int = 3) -> list[float]:
    """Seconds of each call, after one warm-up call, until `seconds` pass (at least min_calls calls)."""
    encode(x)  # warm-up: lazy allocations, TensorRT/cuDNN autotuning, ORT arena growth
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        encode(x)
        times.append(time.perf_counter() - t0)
    return times


def time_encode(encode: Encode, x: np.ndarray, seconds: float, min_calls: int = 3) -> float:
    """Median seconds per call."""
    return float(np.median(time_calls(encode, x, seconds, min_calls)))


def sample_inputs(manifest: Manifest, tokenizer, batch: int) -> dict[str, np.ndarray]:
    """Random pixels [B, 3, H, W] and real token ids [B, L] of short captions."""
    h, w = manifest.image_size
    rng = np.random.default_rng(0)
    captions = [f"a photo of a {word}" for word in ("cat", "dog", "red circle", "rocket")]
    tokens = np.asarray(tokenizer([captions[i % len(captions)] for i in range(batch)]), dtype=np.int64)
    return {"image": rng.standard_normal((batch, 3, h, w), dtype=np.float32), "text": tokens}


def eager_encoders(manifest: Manifest, device: str, source: SourceSpec | None) -> tuple[Towers, str]:
    """The eager model as towers, on `device`, in the export's precision on GPU, loaded through models.factory
    exactly as the torch backend serves it (open_clip's mixed fp16, not model.half())."""
    loaded = eager_model_for(manifest, source)  # fp32 on CPU: checks it is the export's model (fingerprint)
    precision = manifest.precision if device == "cuda" and manifest.precision != "int8" else "fp32"
    if device != "cpu":
        loaded = load_source(source or manifest.source, device, precision)
    towers = TorchTowers(loaded, precision, device)
    return towers, ", ".join(towers.providers)


def bench_export(export_dir: str | Path, device: str = "cpu", batch_sizes: Sequence[int] = (1, 8, 32, 64),
                 backends: Sequence[str] = ("torch", "onnx"), towers: Sequence[str] = ("image", "text"),
                 seconds: float = 3.0, threads: int = 0, source: SourceSpec | None = None,
                 rounds: int = 1, compare: Sequence[str | Path] = ()) -> list[BenchRow]:
    """Throughput of every (tower, backend, batch size) cell.

    With rounds > 1 every cell is timed once per round, backends interleaved, so a burst of load from other
    processes hits both backends alike; each row then pools the calls of all rounds. `compare`: other exports of
    the same model (e.g. its int8 export), run by ONNX Runtime as backend "onnx-<precision>".
    """
    manifest = read_manifest(export_dir)
    threads = threads or cpu_count()  # eager torch and ONNX Runtime get the same cores
    torch.set_num_threads(threads)
    runners = {b: _runners(b, export_dir, manifest, device, threads, source) for b in backends}  # name -> towers
    runners.update(_compared(compare, manifest, device, threads))
    tokenizer = load_tokenizer(manifest, export_dir)
    cells = [(t, n, b) for t in towers for n in batch_sizes for b in runners]
    times: dict[tuple[str, int, str], list[float]] = {c: [] for c in cells}
    for _, (tower, batch, backend) in tqdm([(r, c) for r in range(rounds) for c in cells], desc="bench",
                                          unit="cell"):
        x = sample_inputs(manifest, tokenizer, batch)[tower]
        towers = runners[backend][0]
        encode = towers.encode_image if tower == "image" else towers.encode_text
        times[(tower, batch, backend)] += time_calls(encode, x, seconds)
    return [_row(cell, t, runners[cell[2]][1]) for cell, t in times.items()]


def _row(cell: tuple[str, int, str], times: list[float], runs: str) -> BenchRow:
    tower, batch, backend = cell
    best, median = min(times), float(np.median(times))
    return BenchRow(tower, backend, batch, batch / best, batch / median, median * 1000, len(times), runs)


def _runners(backend: str, export_dir: str | Path, manifest: Manifest, device: str, threads: int,
             source: SourceSpec | None) -> tuple[Towers, str]:
    if backend == "torch":
        return eager_encoders(manifest, device, source)
    enc = load_encoders(export_dir, backend=backend, device=device, threads=threads)
    return enc, ", ".join(enc.providers)


def _compared(dirs: Sequence[str | Path], manifest: Manifest, device: str, threads: int
              ) -> dict[str, tuple[Towers, str]]:
    """ONNX Runtime runners of other exports of the same model, named "onnx-<precision>" (then "(<dir name>)")."""
    out = {}
    for d in dirs:
        enc = load_encoders(d, backend="onnx", device=device, threads=threads)
        if enc.manifest.fingerprint != manifest.fingerprint:
            raise ExportError(f"--compare {d} is an export of another model (fingerprint {enc.manifest.fingerprint}, "
                              f"not {manifest.fingerprint})")
        label = f"onnx-{enc.manifest.precision}"
        label = label if label not in out else f"{label} ({Path(d).name})"  # two int8 recipes, say
        out[label] = (enc, ", ".join(enc.providers))
    return out


def record_knees(export_dir: str | Path, rows: list[BenchRow], device: str) -> str:
    """Write the knee of each tower measured on the export's own runtime into its manifest.json (export/batch_knee.py);
    returns what was recorded, in words."""
    from export.batch_knee import with_knees
    from export.manifest import write_manifest

    manifest = read_manifest(export_dir, verify=False)
    runtime = "tensorrt" if manifest.kind == "tensorrt" else "onnx"
    curves = {t: {r.batch: r.items_per_s for r in rows if (r.tower, r.backend) == (t, runtime)}
              for t in ("image", "text")}
    curves = {t: c for t, c in curves.items() if c}
    if not curves:
        raise ExportError(f"--record needs the export's own runtime among --backends ({runtime})")
    updated = with_knees(manifest, device, curves)
    write_manifest(updated, export_dir)  # manifest.json is not among the hashed files: the export stays valid
    rec = updated.batch_knees[device]
    return (f"recorded in {Path(export_dir) / 'manifest.json'} for {device} on {rec['host']}: "
            + ", ".join(f"{t} max batch {rec[t]['max_batch']}" for t in curves))


def format_table(rows: list[BenchRow]) -> str:
    """Markdown: one line per (tower, batch); items/s per backend as best (median); speed-up over the first backend
    (eager torch when it ran), from the fastest calls and (in parentheses) the median ones."""
    backends = list(dict.fromkeys(r.backend for r in rows))
    cell = {(r.tower, r.batch, r.backend): r for r in rows}
    ref = "torch" if "torch" in backends else backends[0]
    others = [b for b in backends if b != ref]
    head = ["tower", "batch"] + [f"{b} items/s" for b in backends] + [f"{b} / {ref}" for b in others]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for tower, batch in dict.fromkeys((r.tower, r.batch) for r in rows):
        row = [cell[(tower, batch, b)] for b in backends]
        vals = [tower, str(batch)] + [f"{r.items_per_s:.1f} ({r.items_per_s_median:.1f})" for r in row]
        base = cell[(tower, batch, ref)]
        vals += [f"{cell[(tower, batch, b)].items_per_s / base.items_per_s:.2f}× "
                 f"({cell[(tower, batch, b)].items_per_s_median / base.items_per_s_median:.2f}×)" for b in others]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def machine() -> dict[str, str | int]:
    """Where the numbers were measured."""
    info: dict[str, str | int] = {"cpu": cpu_model(), "cores": cpu_count(), "torch": torch.__version__,
                                  "platform": platform.platform()}
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def rows_to_json(rows: list[BenchRow], manifest: Manifest, device: str, threads: int) -> dict:
    return {"model_id": manifest.model_id, "precision": manifest.precision, "device": device,
            "threads": threads or cpu_count(), "machine": machine(), "load_average": os.getloadavg(),
            "rows": [asdict(r) for r in rows]}
