"""Short GPU report: for torch-CUDA, ORT-CUDA, ORT-TensorRT and TensorRT, did it run, how fast, how exact.

    python -m export.gpu_check [--work DIR] [--json FILE] [--seconds 1.0]

Uses ViT-B-32 with random (seeded) weights, so it needs no download. Every path is tried; one that cannot
run is reported with the reason (no CUDA, onnxruntime without that provider, TensorRT not installed, ...).
torch-CUDA runs first and needs nothing but torch and open_clip; the ONNX export the other paths share is made
on first use, inside their own error handling, so a machine without onnx or onnxruntime still measures
torch-CUDA and says why the rest did not run. Each path's line is printed as soon as it finishes, so a run cut
short still reports what it reached. Called by scripts/gpu_check.sh; budgeted to finish in about four minutes
on one GPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from export.bench import time_encode
from export.manifest import SourceSpec
from export.parity import MIN_COSINE, check_parity
from export.runtime.eager import TorchTowers
from models.eval import EVAL_TEMPLATES
from models.factory import LoadedModel

log = logging.getLogger("export.gpu_check")

BATCHES = (1, 32, 128)
PATHS = ("torch-CUDA", "ORT-CUDA", "ORT-TensorRT", "TensorRT")


@dataclass
class PathResult:
    path: str  # one of PATHS, plus the precision
    ran: bool
    why_not: str = ""
    providers: str = ""
    image_min_cosine: float | None = None  # vs eager fp32 on CPU, parity inputs
    text_min_cosine: float | None = None
    parity_passed: bool | None = None
    image_items_per_s: dict[int, float] = field(default_factory=dict)  # batch -> images/s
    text_items_per_s: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0  # wall time of this path, builds included

    def line(self) -> str:
        if not self.ran:
            return f"{self.path:<22} NOT RUN: {self.why_not}"
        img = ", ".join(f"b{b}: {v:.0f}" for b, v in self.image_items_per_s.items())
        txt = ", ".join(f"b{b}: {v:.0f}" for b, v in self.text_items_per_s.items())
        return (f"{self.path:<22} RAN on {self.providers}; parity {'PASS' if self.parity_passed else 'FAIL'} "
                f"(image min cos {self.image_min_cosine:.6f}, text {self.text_min_cosine:.6f}); "
                f"image/s {img}; text/s {txt}; {self.seconds:.0f}s")


def environment() -> dict:
    """What this machine has, in one dict. TensorRT is looked up, not imported (importing it loads libraries that
    would let ORT's TensorRT provider work here whether or not the server's own loading does)."""
    from importlib.metadata import PackageNotFoundError, version

    env: dict = {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
                 "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
        env["ort_providers"] = onnxruntime.get_available_providers()
    except ImportError as e:
        env["onnxruntime"] = f"not installed ({e})"
    try:
        env["tensorrt"] = version("tensorrt")
    except PackageNotFoundError:
        env["tensorrt"] = "not installed"
    return env


def model_source(work: Path, model: str = "ViT-B-32") -> tuple[SourceSpec, LoadedModel]:
    """The model's SourceSpec and its eager fp32 CPU copy, the reference every path is compared with.

    "ViT-B-32" gets random (seeded) weights, so nothing is downloaded; anything else is a models.factory
    source such as the bundled checkpoint directory (a quick smoke run).
    """
    from export.source import load_source, source_spec

    spec = _random_vit_b_32(work) if model == "ViT-B-32" else source_spec(model)
    return spec, load_source(spec)


class Exports:
    """ONNX exports in fp32 (parity-checked on CPU) and fp16 (checked on the GPU paths), made on first use.

    A failed export (onnx missing, say) is remembered and raised again for every path that needs it, so each of
    those paths reports the reason without paying for another attempt."""

    def __init__(self, work: Path, loaded: LoadedModel, spec: SourceSpec) -> None:
        self.work, self.loaded, self.spec = work, loaded, spec
        self._made: dict[str, Path] | None = None
        self._error: Exception | None = None

    def dir(self, precision: str) -> Path:
        if self._error is not None:
            raise self._error
        if self._made is None:
            try:
                self._made = self._export()
            except Exception as e:
                self._error = RuntimeError(f"ONNX export failed: {type(e).__name__}: {e}")
                raise self._error from e
        return self._made[precision]

    def _export(self) -> dict[str, Path]:
        from export.onnx_export import OnnxOptions, export_onnx

        t0 = time.perf_counter()
        dirs = {"fp32": self.work / "onnx-fp32", "fp16": self.work / "onnx-fp16"}
        export_onnx(self.loaded, self.spec, dirs["fp32"],
                    OnnxOptions(parity_shapes=16, parity_templates=EVAL_TEMPLATES[:1]))
        export_onnx(self.loaded, self.spec, dirs["fp16"], OnnxOptions(fp16=True, parity=False))  # checked below
        print(f"exported {self.loaded.model_id} to ONNX fp32 + fp16 in {time.perf_counter() - t0:.0f}s", flush=True)
        return dirs


def _random_vit_b_32(work: Path):
    from export.source import source_spec
    from models.factory import create_model
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ckpt = work / "vit-b-32-random.safetensors"
    save_file({k: v.contiguous() for k, v in create_model("ViT-B-32").state_dict().items()}, str(ckpt))
    return source_spec("ViT-B-32", checkpoint=str(ckpt))


def measure(name: str, loaded, make: Callable[[], tuple[object, str]], precision: str,
            seconds: float) -> PathResult:
    """Build the encoders with `make`, then parity against eager CPU fp32 and throughput per batch size."""
    t0 = time.perf_counter()
    try:
        enc, providers = make()
        report = check_parity(loaded, enc, precision, n_shapes=16, templates=EVAL_TEMPLATES[:1])
        result = PathResult(name, True, providers=providers, image_min_cosine=report.image_min_cosine,
                            text_min_cosine=report.text_min_cosine, parity_passed=report.passed)
        _throughput(enc, loaded, result, seconds)
    except Exception as e:  # report, never crash: the next path still runs
        log.debug("%s failed:\n%s", name, traceback.format_exc())
        result = PathResult(name, False, why_not=f"{type(e).__name__}: {e}".split("\n")[0][:400])
    result.seconds = time.perf_counter() - t0
    print(result.line(), flush=True)
    return result


def _throughput(enc, loaded, result: PathResult, seconds: float) -> None:
    h, w = loaded.preprocess.size
    rng = np.random.default_rng(0)
    for b in BATCHES:
        x = rng.standard_normal((b, 3, h, w), dtype=np.float32)
        result.image_items_per_s[b] = b / time_encode(enc.encode_image, x, seconds)
    tokens = np.asarray(loaded.tokenizer(["a photo of a cat"] * BATCHES[-1]), dtype=np.int64)
    result.text_items_per_s[BATCHES[-1]] = BATCHES[-1] / time_encode(enc.encode_text, tokens, seconds)


def torch_towers(spec: SourceSpec, precision: str) -> TorchTowers:
    """The torch backend's model on CUDA: loaded through models.factory in `precision` (open_clip's fp16 keeps
    LayerNorm in fp32), as service/backends/torch_backend.py loads it."""
    if not torch.cuda.is_available():
        raise RuntimeError(f"no CUDA: torch.cuda.is_available() is False (torch {torch.__version__}, built for "
                           f"CUDA {torch.version.cuda}; no GPU, or a CPU build of torch)")
    from export.source import load_source

    return TorchTowers(load_source(spec, "cuda", precision), precision, "cuda")


def _torch(spec: SourceSpec, precision: str) -> Callable[[], tuple[object, str]]:
    def make():
        towers = torch_towers(spec, precision)
        return towers, ", ".join(towers.providers)
    return make


def _ort(exports: Exports, precision: str, only: str) -> Callable[[], tuple[object, str]]:
    def make():
        from export.runtime import load_encoders
        from export.runtime.deps import require_onnxruntime

        available = require_onnxruntime().get_available_providers()
        if only not in available:  # before exporting: the answer costs nothing
            raise RuntimeError(f"{only} not in this onnxruntime build (it has {available}; install the `gpu` "
                               f"extra: pip install 'clip-serve[gpu]')")
        enc = load_encoders(exports.dir(precision), backend="onnx", device="cuda", max_batch=max(BATCHES),
                            ort_providers=[only])  # a provider that does not start raises ExportError
        return enc, ", ".join(enc.providers)
    return make


def _trt(exports: Exports, precision: str, work: Path) -> Callable[[], tuple[object, str]]:
    def make():
        from export.runtime import load_encoders
        from export.runtime.deps import require_cudart, require_tensorrt
        from export.tensorrt_build import BuildOptions, Profile, build_tensorrt_export

        require_tensorrt(), require_cudart()  # before exporting: the answer costs nothing
        engines = work / f"trt-{precision}"  # built explicitly, as `python -m export tensorrt` does; parity below
        build_tensorrt_export(exports.dir(precision), engines, BuildOptions(profile=Profile(1, 32, max(BATCHES))),
                              parity=False)
        enc = load_encoders(engines, backend="tensorrt", device="cuda")
        return enc, ", ".join(enc.providers)
    return make


def run(work: Path, seconds: float, model: str = "ViT-B-32") -> dict:
    env = environment()
    print("environment:", json.dumps(env), flush=True)
    spec, loaded = model_source(work, model)
    exports = Exports(work, loaded, spec)
    plan = [  # torch-CUDA first (it needs no export); engine builds (minutes) last, so a cut-short run still
        # reports the rest; ORT-TensorRT before TensorRT, so ORT finds TensorRT's libraries by its own loading
        *[(f"torch-CUDA {p}", _torch(spec, p), p) for p in ("fp32", "fp16")],
        *[(f"ORT-CUDA {p}", _ort(exports, p, "CUDAExecutionProvider"), p) for p in ("fp32", "fp16")],
        *[(f"{name} {p}", make, p) for p in ("fp16", "fp32") for name, make in
          (("ORT-TensorRT", _ort(exports, p, "TensorrtExecutionProvider")), ("TensorRT", _trt(exports, p, work)))],
    ]
    results = [measure(name, loaded, make, p, seconds) for name, make, p in plan]
    return {"environment": env, "model": loaded.model_id, "min_cosine_required": MIN_COSINE,
            "results": [asdict(r) for r in results]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", help="scratch directory (default: a temporary one)")
    p.add_argument("--json", help="write the report here too")
    p.add_argument("--seconds", type=float, default=1.0, help="timing per (path, batch size)")
    p.add_argument("--model", default="ViT-B-32",
                   help="ViT-B-32 (random weights, default) or a models.factory source for a quick smoke run")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        report = run(work, args.seconds, args.model)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    ran = [r["path"] for r in report["results"] if r["ran"]]
    print(f"ran: {', '.join(ran) or 'nothing'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
