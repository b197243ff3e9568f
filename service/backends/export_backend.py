"""ONNX Runtime or TensorRT, loaded from an export directory's manifest alone: no source model, no torch, no open_clip
(when the export carries its tokenizer vocabulary, as every export made by this version does)."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from export.batch_knee import cached_knees, cached_partial, recorded_knees
from service.backends.base import Backend
from service.settings import Settings

log = logging.getLogger("service.backends.export")


class ExportBackend(Backend):
    measure_batches = True

    def __init__(self, settings: Settings):
        from export.manifest import load_tokenizer, read_manifest
        from export.runtime import load_encoders

        self.name = settings.backend
        manifest = read_manifest(settings.export_dir, verify=False)  # load_encoders verifies the files
        self.device = _device(settings, manifest.precision)
        # ONNX Runtime builds its sessions without holding the GIL: the tokenizer's tables (0.2-0.4 s of Python for
        # CLIP's BPE) are built meanwhile; a load that fails still fails with load_encoders' error first
        with ThreadPoolExecutor(1, thread_name_prefix="tokenizer") as pool:
            tokenizer = pool.submit(load_tokenizer, manifest, settings.export_dir)
            self.towers = self.encoders = load_encoders(
                settings.export_dir, backend=settings.backend, device=self.device, threads=settings.threads,
                max_batch=max(settings.image_max_batch, settings.text_max_batch))
            self.tokenizer = tokenizer.result()
        m = self.encoders.manifest
        self.precision = m.precision
        _check_precision(settings, m.precision)
        self.model_id, self.fingerprint, self.embed_dim = m.model_id, m.fingerprint, m.embed_dim
        self.context_length = m.context_length
        self.logit_scale, self.logit_bias = m.activation.logit_scale, m.activation.logit_bias
        self.preprocess = m.preprocess_config
        # the knee recorded for this host: by `python -m export bench --record` in the manifest, else by an earlier
        # start's warm-up probe (service/batch_probe.py) in the export's cache
        self.export_dir = settings.export_dir
        self.recorded_max_batch = recorded_knees(m, self.device)
        self.recorded_source = "manifest"
        if not self.recorded_max_batch:
            self.recorded_max_batch = cached_knees(settings.export_dir, self.device, settings.batch_probe_s)
            self.recorded_source = "cache"
            self.recorded_partial = cached_partial(settings.export_dir, self.device) & set(self.recorded_max_batch)
        log.info("export backend %s on %s: providers %s", self.name, self.device, self.encoders.providers)


def _device(settings: Settings, precision: str) -> str:
    """int8 exports run on the CPU: ONNX Runtime's GPU providers have no kernels for their quantized MatMuls."""
    if precision != "int8":
        return settings.resolved_device()
    if settings.device == "cuda" or settings.backend == "tensorrt":
        raise ValueError(f"{settings.export_dir} is an int8 export, which runs on CPU only: set CLIP_BACKEND=onnx "
                         f"CLIP_DEVICE=cpu, or export fp16 for a GPU (python -m export onnx --precision fp16)")
    return "cpu"  # CLIP_DEVICE=auto included: a GPU would not speed these graphs up


def _check_precision(settings: Settings, precision: str) -> None:
    """CLIP_PRECISION=int8 must get an int8 export; other mismatches keep the export's precision with a warning."""
    if settings.precision == precision:
        return
    if settings.precision == "int8":
        raise ValueError(f"CLIP_PRECISION=int8 but {settings.export_dir} is a {precision} export; make an int8 one "
                         f"with `python -m export onnx --precision int8 ...` (or `make export PRECISION=int8`) and "
                         f"point CLIP_EXPORT_DIR at it")
    if "precision" in settings.model_fields_set:
        log.warning("CLIP_PRECISION=%s ignored: the export in %s is %s", settings.precision, settings.export_dir,
                    precision)
