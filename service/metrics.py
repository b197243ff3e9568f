"""Prometheus metrics, prefix clip_, units in the names. One registry per app instance.

With CLIP_WORKERS >= 1 the supervisor sets PROMETHEUS_MULTIPROC_DIR before any process starts: every process writes
its samples there (prometheus_client's multiprocess mode) and /metrics on any front-end reads them all, so it
reports the whole server. Gauges say how their processes' values combine (`multiprocess_mode`).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Every label value these counters take, exported at zero from the start: an alert on increase() or rate()
# has a series to evaluate on a healthy server, and the first event shows as an increase of 1 (a series that
# appears with value 1 has no increase at all).
MODALITIES = ("image", "text")
CACHES = ("text", "labelset")
REJECT_REASONS = ("queue_full", "deadline", "not_ready", "draining",  # service/batcher.py, lifecycle.py
                  "header_timeout", "body_timeout", "too_many_connections")  # service/connections.py
BACKEND_ERROR_KINDS = ("oom", "fatal", "error")  # service/batcher.py, Batcher._isolate
JPEG_FALLBACK_REASONS = ("orientation", "mode", "decoder")  # service/jpeg_tensor.py, JpegOnDevice


class Metrics:
    """Every metric the server exports (deploy/ dashboards and alerts use these names)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("clip_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.request_seconds = Histogram("clip_request_duration_seconds", "HTTP request latency", ["endpoint"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("clip_batch_size", "items per encoder call", ["modality"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_wait = Histogram("clip_queue_wait_seconds", "time an item waited before its batch ran",
                                    ["modality"], buckets=LATENCY_BUCKETS, registry=r)
        self.preprocess = Histogram("clip_preprocess_seconds", "decode+resize (image) / tokenise (text) per item",
                                    ["modality"], buckets=LATENCY_BUCKETS, registry=r)
        self.inference = Histogram("clip_inference_seconds", "encoder time per batch", ["modality"],
                                   buckets=LATENCY_BUCKETS, registry=r)
        # engines' values add up (one queue per engine); a front-end writes none of these
        self.queue_depth = Gauge("clip_queue_depth", "items queued or in flight", ["modality"], registry=r,
                                 multiprocess_mode="livesum")
        self.queue_capacity = Gauge("clip_queue_capacity", "admission cap on queued + in-flight items",
                                    ["modality"], registry=r, multiprocess_mode="livesum")
        self.cache_hits = Counter("clip_cache_hits", "cache hits", ["cache"], registry=r)
        self.cache_misses = Counter("clip_cache_misses", "cache misses", ["cache"], registry=r)
        self.cache_entries = Gauge("clip_cache_entries", "entries held", ["cache"], registry=r,
                                   multiprocess_mode="livesum")
        self.cache_bytes = Gauge("clip_cache_bytes", "bytes held", ["cache"], registry=r, multiprocess_mode="livesum")
        self.rejected = Counter("clip_rejected", "requests refused before inference", ["reason"], registry=r)
        self.dropped = Counter("clip_dropped", "items dropped because their client went away", ["modality"],
                               registry=r)
        self.backend_errors = Counter("clip_backend_errors", "encoder failures by kind", ["kind"], registry=r)
        self.jpeg_fallbacks = Counter("clip_jpeg_fallbacks", "JPEGs decoded by Pillow although CLIP_JPEG_DECODE=cuda, "
                                      "by reason (orientation, mode, decoder)", ["reason"], registry=r)
        # 1 only while every live process says 1
        self.ready = Gauge("clip_ready", "1 when the model is loaded, warmed up and not draining", registry=r,
                           multiprocess_mode="livemin")
        self.model_info = Gauge("clip_model_info", "the loaded model",
                                ["model", "backend", "device", "precision", "fingerprint"], registry=r,
                                multiprocess_mode="livemax")
        for m in MODALITIES:
            for metric in (self.batch_size, self.queue_wait, self.preprocess, self.inference, self.queue_depth,
                           self.queue_capacity, self.dropped):
                metric.labels(modality=m)
        for c in CACHES:
            for metric in (self.cache_hits, self.cache_misses, self.cache_entries, self.cache_bytes):
                metric.labels(cache=c)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason=reason)
        for kind in BACKEND_ERROR_KINDS:
            self.backend_errors.labels(kind=kind)
        for reason in JPEG_FALLBACK_REASONS:
            self.jpeg_fallbacks.labels(reason=reason)

    def exposition(self) -> bytes:
        """The /metrics text: this registry, or every process's samples in multiprocess mode."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
