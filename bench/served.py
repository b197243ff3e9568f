"""Served throughput and latency: the real server under closed-loop load, per endpoint and concurrency.

Scenarios (one server per configuration, default settings unless named):
    image-224       POST /embed/image, one 224x224 JPEG (real photos) per request, multipart
    image-1080p     POST /embed/image, one 1920x1080 JPEG per request
    text            POST /embed/text, one text per request, unique (every prompt misses the cache)
    classify-cold   POST /classify, one 224x224 JPEG + 10 labels never seen before (default template)
    classify-10x80  POST /classify with a stored label set of 10 labels x 80 templates (top_k 5)
    classify-1000x80  the same with 1,000 labels, where building the set fits the time budget
    image-224 @ CLIP_IMAGE_MAX_BATCH=1  (batching gain, ratio b)
"""

from __future__ import annotations

import itertools
import json
import logging
import statistics
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import httpx
from tqdm import tqdm

from bench import load
from bench.assets import BenchModel, photo_jpegs
from bench.load import Request
from bench.machine import OtherLoad, own_cpu_seconds
from bench.server import BenchServer, batch_histogram, mean_batch, metric

log = logging.getLogger("bench.served")

OPENAI_TEMPLATES = 80
LABELSET_SIZES = (10, 1000)  # labels in the cached label sets (x 80 templates)


@dataclass
class Budget:
    """How long each point runs; `quick` shrinks everything for a smoke test."""

    seconds: float = 10.0  # measurement window per point
    warmup_s: float = 20.0  # at most, before the window starts
    concurrency: Sequence[int] = (1, 8, 32, 128)
    cold_concurrency: Sequence[int] = (1, 8)  # cold classify encodes 10 prompts per request: keep it short
    labelset_build_s: float = 150.0  # build a cached label set only if its estimated encode time fits this


@dataclass
class Scenario:
    name: str
    make: load.RequestFactory
    concurrency: Sequence[int]
    modality: str = "image"  # whose batch sizes to record
    labelset: int = 0  # labels of the stored label set `bench<N>` it classifies against (0: none)


@dataclass
class ScenarioResult:
    name: str
    points: list[dict] = field(default_factory=list)  # load.PointResult + batch stats, one per concurrency
    peak_rss_mib: float | None = None
    peak_gpu_mib: int | None = None
    note: str = ""


def image_request(blobs: list[bytes]) -> load.RequestFactory:
    bodies = [load.multipart([("file", b, f"photo{i}.jpg")]) for i, b in enumerate(blobs)]

    def make(n: int) -> Request:
        body, ctype = bodies[n % len(bodies)]
        return Request("/embed/image", body, ctype)
    return make


def text_request(run_id: str) -> load.RequestFactory:
    unique = itertools.count()  # across points too: a text seen before would be a cache hit

    def make(n: int) -> Request:
        return Request("/embed/text", json.dumps({"texts": [f"a photo of object {run_id}-{next(unique)}"]}).encode(),
                       "application/json")
    return make


def classify_cold_request(blobs: list[bytes], run_id: str, n_labels: int = 10) -> load.RequestFactory:
    unique = itertools.count()

    def make(n: int) -> Request:
        u = next(unique)
        labels = [("labels", f"thing {run_id}-{u}-{k}", None) for k in range(n_labels)]
        body, ctype = load.multipart([("file", blobs[n % len(blobs)], "photo.jpg"), *labels])
        return Request("/classify", body, ctype)
    return make


def classify_cached_request(blobs: list[bytes], labelset: str, top_k: int = 5) -> load.RequestFactory:
    bodies = [load.multipart([("file", b, "photo.jpg"), ("labelset", labelset, None), ("top_k", str(top_k), None)])
              for b in blobs]

    def make(n: int) -> Request:
        body, ctype = bodies[n % len(bodies)]
        return Request("/classify", body, ctype)
    return make


def put_labelset(url: str, name: str, n_labels: int) -> float:
    """PUT /labelsets/{name} with n labels x the 80 OpenAI templates; returns seconds it took."""
    t0 = time.perf_counter()
    r = httpx.put(f"{url}/labelsets/{name}", timeout=3600,
                  json={"labels": [f"category {i}" for i in range(n_labels)], "templates": "openai_imagenet"})
    r.raise_for_status()
    return time.perf_counter() - t0


def run_scenario(server: BenchServer, s: Scenario, budget: Budget) -> ScenarioResult:
    out = ScenarioResult(s.name)
    with server.memory() as mem:
        for c in tqdm(s.concurrency, desc=s.name, unit="point", leave=False):
            out.points.append(run_point(server, s, c, budget.seconds, budget.warmup_s))
    out.peak_rss_mib, out.peak_gpu_mib = mem.peak_rss_mib, mem.peak_gpu_mib
    return out


def run_point(server: BenchServer, s: Scenario, c: int, seconds: float, warmup_s: float, label: str = "") -> dict:
    """One closed-loop point of a scenario at concurrency c, with the server's batch sizes and CPU time."""
    before, cpu0 = server.metrics(), server.tree_cpu_seconds()
    with OtherLoad(lambda: (server.tree_cpu_seconds() or 0.0) + own_cpu_seconds()) as other:
        p = load.run(server.url, s.make, c, seconds, warmup_s=warmup_s)
        cpu1 = server.tree_cpu_seconds()
    server.wait_idle()
    after = server.metrics()
    point = load.to_json(p)
    # CPU per item is steadier than items/s on a shared machine: it says what each item costs
    point["server_cpu_ms_per_item"] = (round(1000 * (cpu1 - cpu0) / p.total_items, 2)
                                       if cpu0 is not None and cpu1 is not None and p.total_items else None)
    point["other_processes_cores"] = other.cores  # how quiet the machine was (0 = only us)
    point["client_cpu_ms_per_item"] = round(1000 * p.client_cpu_s / p.total_items, 2) if p.total_items else None
    point["mean_batch"] = mean_batch(before, after, s.modality)
    point["batch_histogram"] = batch_histogram(before, after, s.modality)
    point["text_cache_hits"] = int(metric(after, "clip_cache_hits_total", cache="text") -
                                   metric(before, "clip_cache_hits_total", cache="text"))
    tqdm.write(f"  {label + s.name:<21} {p.line()}  mean batch {point['mean_batch']}, server CPU "
               f"{point['server_cpu_ms_per_item']} ms/item, other processes {other.cores} cores")
    return point


def scenarios(budget: Budget, text_items_per_s: float | None, quick: bool) -> tuple[list[Scenario], dict]:
    """The scenario list, and why a label-set scenario is left out when building its set would take too long."""
    small, large = photo_jpegs(224, 224), photo_jpegs(1920, 1080)
    run_id = f"{time.time_ns() % 10**9}"
    conc = budget.concurrency
    out = [Scenario("image-224", image_request(small), conc),
           Scenario("image-1080p", image_request(large), conc),
           Scenario("text", text_request(run_id), conc, "text"),
           Scenario("classify-cold", classify_cold_request(small, run_id), budget.cold_concurrency)]
    notes: dict = {}
    for n_labels in LABELSET_SIZES:
        name = f"classify-{n_labels}x{OPENAI_TEMPLATES}"
        prompts = n_labels * OPENAI_TEMPLATES
        estimate = prompts / text_items_per_s if text_items_per_s else None
        if estimate is not None and estimate > budget.labelset_build_s:
            notes[name] = (f"not run: building {prompts:,} prompt embeddings would take about {estimate:.0f}s at "
                           f"{text_items_per_s:.0f} texts/s (budget {budget.labelset_build_s:.0f}s)")
            continue
        out.append(Scenario(name, classify_cached_request(small, f"bench{n_labels}"), conc if not quick else conc[:2],
                            labelset=n_labels))
    return out, notes


def store_labelsets(url: str, todo: list[Scenario]) -> dict:
    """PUT the label sets the classify-NxT scenarios use; returns how long each took."""
    notes = {}
    for s in todo:
        if s.labelset:
            seconds = put_labelset(url, f"bench{s.labelset}", s.labelset)
            notes[s.name] = (f"label set built once in {seconds:.1f}s ({s.labelset * OPENAI_TEMPLATES:,} prompts), "
                             f"then served from cache")
    return notes


def labelset_env(todo: list[Scenario], budget: Budget) -> dict[str, str]:
    """What a user storing a 1,000-label x 80-template set sets too (README, Security: Deadlines): room for its
    prompts (CLIP_MAX_PROMPTS), a prompt cache that holds them, and a request deadline as long as the build."""
    prompts = max((s.labelset * OPENAI_TEMPLATES for s in todo), default=0)
    if prompts <= 10_000:  # the defaults already allow it
        return {}
    return {"CLIP_MAX_PROMPTS": str(prompts), "CLIP_TEXT_CACHE_MB": "256",
            "CLIP_REQUEST_TIMEOUT_S": str(max(600.0, 4 * budget.labelset_build_s))}


def run_all(env: dict[str, str], log_path: Path, todo: list[Scenario], budget: Budget,
            notes: dict) -> tuple[dict, dict]:
    """Run scenarios against one server -> (its /info, results by scenario name). If the server dies, the
    error carries its exit status and log tail."""
    out: dict = {}
    with BenchServer(env, log_path) as server:
        notes.update(store_labelsets(server.url, todo))
        info = httpx.get(server.url + "/info", timeout=30).json()
        for s in todo:
            try:
                out[s.name] = run_scenario(server, s, budget).__dict__
            except httpx.HTTPError as exc:
                if server.proc.poll() is not None:
                    raise RuntimeError(f"the server exited with status {server.proc.returncode} during {s.name}:\n"
                                       f"{server.log()[-2000:]}") from exc
                raise
    return info, out


def measure(model: BenchModel, backend: str, budget: Budget, raw_dir: Path, text_items_per_s: float | None = None,
            extra_env: dict[str, str] | None = None, quick: bool = False,
            only: Sequence[str] | None = None) -> dict:
    """All scenarios against one server, then image-224 at concurrency 32 with max batch 1 (ratio b)."""
    todo, notes = scenarios(budget, text_items_per_s, quick)
    todo = [s for s in todo if not only or s.name in only]
    env = {**model.server_env(backend), **labelset_env(todo, budget), **(extra_env or {})}
    info, scenarios_out = run_all(env, raw_dir / f"server-{model.key}-{backend}.log", todo, budget, notes)
    result: dict = {"model": model.key, "backend": backend, "env": env, "info": info,
                    "scenarios": scenarios_out, "notes": notes}
    if not only or "image-224-batch1" in only:
        c = 32 if 32 in budget.concurrency else max(budget.concurrency)  # ratio b is defined at 32
        batch1 = [Scenario("image-224-batch1", image_request(photo_jpegs(224, 224)), (c,))]
        _, out = run_all({**env, "CLIP_IMAGE_MAX_BATCH": "1"}, raw_dir / f"server-{model.key}-{backend}-batch1.log",
                         batch1, budget, result["notes"])
        result["scenarios"].update(out)
    return result


PRECISION_CONCURRENCY = (1, 8, 16, 32)  # 16: the issue 14 target point; 1: latency


def compare_precisions(model: BenchModel, budget: Budget, raw_dir: Path, concurrency: Sequence[int] = PRECISION_CONCURRENCY,
                       rounds: int = 2, precisions: Sequence[str] = ("fp32", "int8")) -> dict:
    """/embed/image (one 224x224 JPEG) and /embed/text (one new text) against one server per precision (ONNX
    Runtime on CPU, default settings otherwise), all up at once: each (scenario, concurrency) is measured on every
    server in turn, `rounds` times, so the ratios between precisions are taken back to back."""
    run_id = f"{time.time_ns() % 10**9}"
    todo = [Scenario("image-224", image_request(photo_jpegs(224, 224)), concurrency),
            Scenario("text", text_request(run_id), concurrency, "text")]
    rounds_out: dict = {p: {s.name: {c: [] for c in concurrency} for s in todo} for p in precisions}
    with ExitStack() as stack:
        servers = {p: stack.enter_context(BenchServer({**model.server_env("onnx", p), "CLIP_DEVICE": "cpu"},
                                                      raw_dir / f"server-{model.key}-onnx-{p}.log"))
                   for p in precisions}
        info = {p: httpx.get(srv.url + "/info", timeout=30).json() for p, srv in servers.items()}
        for s in todo:
            for c in s.concurrency:
                for _ in range(rounds):
                    for p, srv in servers.items():
                        rounds_out[p][s.name][c].append(run_point(srv, s, c, budget.seconds / rounds,
                                                                  budget.warmup_s, f"{p} "))
        rss = {p: srv.memory().peak_rss_mib for p, srv in servers.items()}
    scenarios_out = {p: {name: {"name": name, "points": [_pool(pts) for pts in by_c.values()],
                                "peak_rss_mib": rss[p], "peak_gpu_mib": None, "note": ""}
                         for name, by_c in by_name.items()} for p, by_name in rounds_out.items()}
    return {"model": model.key, "backend": "onnx", "precisions": list(precisions), "rounds": rounds,
            "info": info, "scenarios": scenarios_out}


def _pool(points: list[dict]) -> dict:
    """One point from the rounds of one (precision, scenario, concurrency): items/s summed over all windows, latency
    percentiles as the median of the rounds', and every round kept."""
    window = sum(p["window_s"] for p in points)
    items = sum(p["items_per_s"] * p["window_s"] for p in points)
    latency = {q: statistics.median(p["latency_ms"][q] for p in points if p["latency_ms"])
               for q in ("p50", "p90", "p99", "mean", "max") if all(p["latency_ms"] for p in points)}
    merged = {**points[0], "window_s": round(window, 3), "ok": sum(p["ok"] for p in points),
              "failed": sum(p["failed"] for p in points), "items_per_s": items / window if window else 0.0,
              "latency_ms": latency, "rounds": points}
    merged["other_processes_cores"] = max((p["other_processes_cores"] or 0.0) for p in points)
    merged["errors"] = {k: sum(p["errors"].get(k, 0) for p in points) for p in points for k in p["errors"]}
    return merged
