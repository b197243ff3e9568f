"""All server settings: one pydantic-settings class, environment prefix CLIP_. README documents each field."""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal, Optional

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models import DEFAULT_MODEL  # the package, not models.factory: settings load no torch or open_clip

_DEVICE = re.compile(r"^(cpu|cuda|cuda:\d+)$")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLIP_", env_file=None, extra="ignore")

    # --- model ---------------------------------------------------------------------------------------------
    model: str = Field(DEFAULT_MODEL, description="open_clip architecture (ViT-B-32, ...), hf-hub: id, or "
                                                  "checkpoint directory; default: the bundled shapes model")
    pretrained: Optional[str] = Field(None, description="open_clip pretrained tag for CLIP_MODEL, e.g. "
                                                        "laion2b_s34b_b79k (downloaded into CLIP_CACHE_DIR)")
    checkpoint: Optional[str] = Field(None, description="local state dict (.safetensors/.pt) for the "
                                                        "architecture named by CLIP_MODEL")
    export_dir: Optional[str] = Field(None, description="export directory (python -m export onnx ...); "
                                                        "required for the onnx and tensorrt backends")
    cache_dir: Optional[str] = Field(None, description="where downloaded weights are cached")

    # --- runtime -------------------------------------------------------------------------------------------
    backend: Literal["torch", "onnx", "tensorrt"] = Field("torch", description="inference engine")
    device: Literal["cpu", "cuda", "auto"] = Field("auto", description="auto = cuda when available")
    precision: Literal["fp32", "fp16", "int8"] = Field("fp32", description="fp16 needs CUDA (torch) or an fp16 "
                                                                           "export; int8 needs an int8 export (CPU)")
    threads: int = Field(0, ge=0, description="CPU inference threads (0 = all cores)")
    preprocess_workers: int = Field(0, ge=0, description="image decode/resize threads (0 = cores, min 2)")

    # --- processes (service/supervisor.py) -----------------------------------------------------------------
    workers: int = Field(0, ge=0, le=64, description="HTTP front-end processes that parse and decode, beside one "
                                                     "engine process per device; 0 = everything in one process")
    devices: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="devices to run an engine process on (comma-separated: cuda:0,cuda:1; "
                                          "cpu); empty = CLIP_DEVICE. Needs CLIP_WORKERS >= 1")
    shm_pixels_mb: float = Field(16.0, ge=0, le=4096, description="shared memory (/dev/shm) per front-end for its "
                                                                   "decoded images on their way to the engine; 0 = "
                                                                   "send them over the engine's socket")
    engine_hang_s: float = Field(30.0, ge=0, description="an engine process that has answered and then not "
                                                        "answered the supervisor's pings for this long is killed "
                                                        "and the server exits 1; 0 = never")

    # --- batching ------------------------------------------------------------------------------------------
    image_max_batch: int = Field(32, ge=1, le=4096, description="most images per encoder call")
    image_max_wait_ms: float = Field(10.0, ge=0, le=1000, description="wait after the first image for more")
    text_max_batch: int = Field(64, ge=1, le=4096, description="most texts per encoder call")
    text_max_wait_ms: float = Field(5.0, ge=0, le=1000, description="wait after the first text for more")
    # every encoder call in the probe is a full batch of that size: a slow CPU model at batch 32 takes ~1 s per call,
    # so the largest sizes are skipped when their estimated time would overrun this (the cap is then the knee of
    # the sizes measured)
    batch_probe_s: float = Field(3.0, ge=0, le=600, description="seconds (both towers together) to time batch sizes "
                                                                "at warm-up and choose the max batches (0 = off)")
    max_queue: int = Field(256, ge=1, description="queued + in-flight items per modality before 503")
    request_timeout_s: float = Field(10.0, gt=0, description="queue deadline per request; expired work -> 503")

    # --- caches --------------------------------------------------------------------------------------------
    text_cache_mb: float = Field(64.0, ge=0, description="byte budget of the prompt-embedding LRU cache")
    labelset_cache_mb: float = Field(64.0, ge=0, description="byte budget of cached label-set classifiers")
    max_labelsets: int = Field(64, ge=0, description="named label sets kept by PUT /labelsets/{name}")

    # --- limits --------------------------------------------------------------------------------------------
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="request body cap -> 413")
    max_images_per_request: int = Field(64, ge=1, description="images per request -> 413 above")
    max_texts_per_request: int = Field(256, ge=1, description="texts per request -> 413 above")
    max_labels: int = Field(1000, ge=1, description="labels per classify / label set -> 413 above")
    max_templates: int = Field(100, ge=1, description="templates per classify / label set")
    # labels x templates: each prompt is one text-encoder pass. 10,000 prompts of a 512-d model fit the default
    # 64 MB prompt cache, so a request cut off by its deadline resumes from the cache when retried (README)
    max_prompts: int = Field(10_000, ge=1, description="labels x templates per classify / label set -> 413 above")
    max_image_pixels: int = Field(40_000_000, ge=1, description="pixel cap checked before decoding -> 413")
    reduced_jpeg_decode: bool = Field(True, description="decode large JPEGs at reduced size (Pillow draft) and "
                                                       "reduce other large images before converting them")
    jpeg_decode: Literal["cpu", "cuda"] = Field("cpu", description="where JPEGs are decoded: cpu (Pillow) or "
                                                 "cuda (nvJPEG; needs a CUDA device; not yet run on a GPU)")

    # --- network / security --------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="bind address (0.0.0.0 in containers)")
    port: int = Field(8000, ge=1, le=65535, description="bind port")
    api_key: Optional[str] = Field(None, description="if set, inference/admin routes need 'Authorization: "
                                                     "Bearer <key>'")
    public_paths: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["/healthz", "/readyz", "/metrics"],
        description="paths that stay open when CLIP_API_KEY is set (comma-separated); every other API route "
                    "needs the key")
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list,
                                                         description="allowed CORS origins (off if empty)")
    drain_s: float = Field(25.0, ge=0, description="on SIGTERM, time to finish in-flight requests; the process "
                                                   "exits within this + 10 s whatever clients do")

    # --- connections (service/connections.py) --------------------------------------------------------------
    header_timeout_s: float = Field(10.0, gt=0, description="a request's headers must arrive within this, from "
                                                           "its first byte (or the connection's start) -> 408")
    body_timeout_s: float = Field(60.0, gt=0, description="a request's body must arrive within this after its "
                                                         "headers -> 408 (20 MiB in 60 s needs ~350 KB/s)")
    keepalive_timeout_s: float = Field(5.0, gt=0, description="idle time allowed between requests on a "
                                                             "keep-alive connection before it is closed")
    max_connections: int = Field(512, ge=1, description="open client connections; requests on those beyond get "
                                                        "503 (each may buffer up to CLIP_MAX_BODY_BYTES)")

    # --- image URLs (off by default; see service/urls.py) ---------------------------------------------------
    allow_urls: bool = Field(False, description="accept https image URLs in JSON image fields")
    url_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="hosts image URLs may name (comma-separated): 'img.example.com', "
                                          "'*.example.com' (subdomains) or '*' (any public host)")
    url_timeout_s: float = Field(5.0, gt=0, le=60, description="whole-fetch deadline per URL, redirects included")
    url_max_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="largest image a URL may return -> 413")
    url_ca_bundle: Optional[str] = Field(None, description="PEM file of CAs trusted for URL fetches "
                                                           "(default: the certifi bundle)")
    url_allow_loopback_for_tests: bool = Field(False, description="UNSAFE, tests only: let URLs reach "
                                                                  "127.0.0.0/8 and ::1")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    otel: Optional[bool] = Field(None, description="OpenTelemetry tracing (service/tracing.py): true on, false off; "
                                                   "unset: on when OTEL_TRACES_EXPORTER or an OTLP endpoint is set")

    @field_validator("cors_origins", "public_paths", "url_allowed_hosts", "devices", mode="before")
    @classmethod
    def _split_list(cls, v):  # accept "a,b" as well as JSON lists
        if isinstance(v, str):
            if v.strip().startswith("["):
                return json.loads(v)
            return [o.strip() for o in v.split(",") if o.strip()]
        return v

    @model_validator(mode="after")
    def _check_combinations(self) -> "Settings":
        if self.backend in ("onnx", "tensorrt") and not self.export_dir:
            raise ValueError(f"CLIP_BACKEND={self.backend} needs CLIP_EXPORT_DIR (an export directory made by "
                             f"`python -m export onnx ...`)")
        if self.precision == "int8" and self.backend != "onnx":
            raise ValueError("CLIP_PRECISION=int8 runs an int8 export on ONNX Runtime: set CLIP_BACKEND=onnx and "
                             "CLIP_EXPORT_DIR to a `python -m export onnx --precision int8` directory")
        if self.pretrained and self.checkpoint:
            raise ValueError("set CLIP_PRETRAINED or CLIP_CHECKPOINT, not both")
        if self.jpeg_decode == "cuda" and self.device == "cpu":
            raise ValueError("CLIP_JPEG_DECODE=cuda needs a CUDA device (CLIP_DEVICE=cuda or auto)")
        for dev in self.devices:
            if not _DEVICE.match(dev):
                raise ValueError(f"CLIP_DEVICES: {dev!r} is not a device; use cpu, cuda or cuda:N (e.g. cuda:0,cuda:1)")
        if len(self.devices) > 1 and self.workers == 0:
            raise ValueError("CLIP_DEVICES names several devices, which needs an engine process per device: set "
                             "CLIP_WORKERS >= 1")
        if self.workers and self.jpeg_decode == "cuda":
            raise ValueError("CLIP_JPEG_DECODE=cuda decodes in the process that holds the GPU; with CLIP_WORKERS >= 1 "
                             "images are decoded in the front-end processes: use CLIP_JPEG_DECODE=cpu, or CLIP_WORKERS=0")
        if self.allow_urls and not self.url_allowed_hosts:
            raise ValueError("CLIP_ALLOW_URLS=true needs CLIP_URL_ALLOWED_HOSTS (e.g. 'images.example.com', "
                             "'*.example.com', or '*' for any public host)")
        return self

    def resolved_device(self) -> str:
        """cpu or cuda. "auto" asks the backend's own runtime, so an onnx or tensorrt server never imports torch:
        onnx -> cuda when this onnxruntime build has the CUDA provider and the driver sees a GPU; tensorrt -> cuda
        (it runs nowhere else); torch -> cuda when torch sees a device."""
        if self.device != "auto":
            return self.device
        if self.backend == "tensorrt":
            return "cuda"
        if self.backend == "onnx":
            from export.runtime.deps import require_onnxruntime
            from export.runtime.gpu_libs import cuda_device_count

            has_cuda_ep = "CUDAExecutionProvider" in require_onnxruntime().get_available_providers()
            return "cuda" if has_cuda_ep and cuda_device_count() > 0 else "cpu"
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def engine_devices(self) -> list[str]:
        """One entry per engine process: CLIP_DEVICES, or CLIP_DEVICE alone."""
        return list(self.devices) or [self.device]

    def redacted(self) -> dict:
        d = self.model_dump()
        if d.get("api_key"):
            d["api_key"] = "***"
        return d

    def describe(self) -> str:
        return json.dumps(self.redacted(), default=str)
