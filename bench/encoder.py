"""Encoder limit: in-process items/s per backend (eager torch, ONNX Runtime fp32 and int8), tower and batch size.

No HTTP, no decoding: random pixels [B, 3, H, W] and real token ids [B, L] straight into the encoder, with the
same thread count the server uses. This is the ceiling the served numbers are divided by (ratio a). Within one
(tower, batch) the runners take turns, `rounds` times, so a burst of load from other processes hits them alike
and ratios between them (int8 over fp32) are taken back to back.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from bench.assets import BenchModel
from bench.machine import OtherLoad, cores, own_cpu_seconds
from export.bench import time_calls  # one warm-up call, then timed calls for `seconds`

log = logging.getLogger("bench.encoder")

Encode = Callable[[np.ndarray], np.ndarray]


@dataclass
class EncoderRow:
    model: str  # BenchModel.key
    backend: str  # "torch" | "onnx"
    device: str  # "cpu" | "cuda"
    precision: str  # "fp32" | "fp16" | "int8"
    tower: str  # "image" | "text"
    batch: int
    items_per_s: float
    ms_per_batch: float  # median
    calls: int  # timed calls behind the median
    other_processes_cores: float | None = None  # cores other processes kept busy meanwhile (0 = quiet)


def encoders(model: BenchModel, backend: str, device: str, threads: int, precision: str = "fp32") -> dict[str, Encode]:
    """One backend's towers (export.runtime, as the server loads them) as {"image": encode, "text": encode}."""
    if backend == "torch":
        from export.runtime.eager import TorchTowers

        towers = TorchTowers.load(model.model, checkpoint=model.checkpoint, device=device, precision=precision,
                                  threads=threads or cores())  # eager gets the same cores as ONNX Runtime
    else:
        from export.runtime import load_encoders

        towers = load_encoders(model.export_for(precision), backend=backend, device=device, threads=threads)
    return {"image": towers.encode_image, "text": towers.encode_text}


def inputs(model: BenchModel, batch: int) -> dict[str, np.ndarray]:
    """Random pixels [B, 3, H, W] and token ids [B, L] of short distinct captions."""
    from export.manifest import load_tokenizer, read_manifest

    manifest = read_manifest(model.export_dir, verify=False)
    h, w = manifest.image_size
    tokens = np.asarray(load_tokenizer(manifest, model.export_dir)([f"a photo of object number {i}"
                                                                    for i in range(batch)]), dtype=np.int64)
    return {"image": np.random.default_rng(0).standard_normal((batch, 3, h, w), dtype=np.float32), "text": tokens}


def measure(model: BenchModel, backends: Sequence[str] = ("torch", "onnx"), towers: Sequence[str] = ("image", "text"),
            batch_sizes: Sequence[int] = (1, 8, 32), seconds: float = 3.0, device: str = "cpu",
            threads: int = 0, precision: str = "fp32", int8: bool = False, rounds: int = 1) -> list[EncoderRow]:
    """Every (backend, precision, tower, batch) cell of one model; `int8` adds ONNX Runtime on the int8 export.

    `precision` is the torch backend's (fp16 on a GPU); exports are fp32 (and int8)."""
    runners = [(b, precision if b == "torch" else "fp32") for b in backends] + ([("onnx", "int8")] if int8 else [])
    loaded = {r: encoders(model, r[0], device, threads, r[1]) for r in runners}
    data = {n: inputs(model, n) for n in batch_sizes}
    times: dict[tuple, list[float]] = {}
    other: dict[tuple, list[float]] = {}
    order = [(t, n, r) for _ in range(rounds) for t in towers for n in batch_sizes for r in runners]
    for tower, batch, runner in tqdm(order, desc=f"encoder {model.key}", unit="cell"):
        with OtherLoad(own_cpu_seconds) as busy:
            times.setdefault((tower, batch, runner), []).extend(
                time_calls(loaded[runner][tower], data[batch][tower], seconds / rounds, min_calls=2))
        other.setdefault((tower, batch, runner), []).append(busy.cores or 0.0)
    rows = []
    for (tower, batch, (backend, prec)), t in times.items():
        sec = float(np.median(t))
        rows.append(EncoderRow(model.key, backend, device, prec, tower, batch, batch / sec, sec * 1000, len(t),
                               round(max(other[(tower, batch, (backend, prec))]), 2)))
    return sorted(rows, key=lambda r: (r.backend, r.precision, r.tower, r.batch))


def best(rows: list[EncoderRow], model: str, backend: str, tower: str, precision: str | None = None
         ) -> EncoderRow | None:
    """The batch size with the most items/s for one (model, backend, tower[, precision])."""
    mine = [r for r in rows if (r.model, r.backend, r.tower) == (model, backend, tower)
            and (precision is None or r.precision == precision)]
    return max(mine, key=lambda r: r.items_per_s, default=None)


def to_json(rows: list[EncoderRow]) -> list[dict]:
    return [asdict(r) for r in rows]
