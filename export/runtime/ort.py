"""ONNX Runtime behind the towers interface: one session per tower, provider choice, CPU threads, I/O binding on GPU.

On device="cuda" the providers are TensorRT EP -> CUDA EP -> CPU, each only if this onnxruntime build has it and
(TensorRT EP) TensorRT's libraries load (export/runtime/gpu_libs.py). A provider chosen that way must then start:
ORT skips one whose libraries fail to load with only a warning, so a session that lacks one is an error here,
not a silent slowdown. ORT's own fallback (re-creating a failed session or run on other providers, without our
session options) is off.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from export.cache_files import exclusive_lock
from export.errors import GPU_EXTRA, ExportError
from export.manifest import GraphSpec, Manifest
from export.runtime.base import Encoders
from export.runtime.deps import require_onnxruntime
from export.runtime.gpu_libs import preload_tensorrt
from export.runtime.heap import large_frees_returned

log = logging.getLogger(__name__)

TRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
GPU_EPS = (TRT_EP, CUDA_EP)
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
              "tensor(int32)": np.int32}


def choose_providers(device: str, available: Sequence[str]) -> tuple[list[str], str]:
    """Providers to ask for, best first (TensorRT EP -> CUDA EP -> CPU), and a sentence saying why."""
    if device == "cpu":
        return [CPU_EP], "device=cpu"
    if device != "cuda":
        raise ValueError(f"device must be 'cpu' or 'cuda', not {device!r}")
    chosen = [ep for ep in GPU_EPS if ep in available]
    missing = [ep for ep in GPU_EPS if ep not in available]
    why = "; ".join(f"{ep} not available in this onnxruntime build (install the `gpu` extra: {GPU_EXTRA})"
                    for ep in missing)
    if not chosen:
        return [CPU_EP], f"device=cuda but falling back to CPU: {why}"
    return chosen + [CPU_EP], f"device=cuda, using {chosen[0]}" + (f"; {why}" if why else "")


def session_options(ort: Any, threads: int, shared_arena: bool = False):
    """CPU settings: `threads` intra-op threads (0 = one per core), all graph optimisations, sequential; with
    `shared_arena`, CPU memory from the arena registered by share_cpu_arena instead of one of its own."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(0, int(threads))  # 0 lets ORT use every physical core
    opts.inter_op_num_threads = 1  # towers are one chain of ops: no parallel branches to run
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: ORT warns about every unused initializer otherwise
    if shared_arena:
        opts.add_session_config_entry("session.use_env_allocators", "1")
    return opts


_shared_arena: list[bool] = []  # share_cpu_arena's outcome, once per process


def share_cpu_arena(ort: Any) -> bool:
    """Register one CPU arena in ONNX Runtime's environment for sessions to share (once per process); False if it
    could not be. The towers never run at once (the server has one inference thread), so one arena sized for the
    larger one's activations serves both: ViT-B-32 fp32 run at batches 1-8 held 677 MiB against 705 MiB with an
    arena per session, at the same speed (docs/benchmarks/README.md, "Lean serving")."""
    if not _shared_arena:
        try:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            # max memory 0 (no cap), extend strategy 0 (next power of two: ORT's default), initial chunk and
            # dead-bytes limit -1 (ORT's defaults): the arena each session would have made, made once
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 0, -1, -1))
            _shared_arena.append(True)
        except Exception as e:  # noqa: BLE001 - ORT's own error types; an arena per session still works
            log.info("onnxruntime: no shared CPU arena (%s); each session keeps its own", e)
            _shared_arena.append(False)
    return _shared_arena[0]


def disabled_optimizers(precision: str) -> list[str]:
    """Optimisers to switch off: onnxruntime 1.32's NCHWc layout pass crashes (SIGSEGV) on fp16 CPU graphs."""
    return ["NchwcTransformer"] if precision == "fp16" else []


def usable_providers(device: str, available: Sequence[str]) -> tuple[list[str], str]:
    """`available` less the TensorRT EP when TensorRT's libraries do not load (loading them if they can be)."""
    if device != "cuda" or TRT_EP not in available:
        return list(available), ""
    why_not = preload_tensorrt()
    if why_not is None:
        return list(available), ""
    return [p for p in available if p != TRT_EP], f"{TRT_EP} skipped: {why_not}"


def provider_options(provider: str, cache_dir: Path, input_name: str, input_shape: Sequence[int],
                     max_batch: int, precision: str) -> dict[str, Any]:
    """Per-provider options: TensorRT EP gets an engine/timing cache and a batch profile 1..max_batch; the CUDA EP
    runs fp32 graphs in true fp32 (its default, TF32 matmuls, rounds inputs to 10 mantissa bits, which can break
    fp32 parity at 0.99999). ORT's TensorRT EP has no TF32 switch: TensorRT's default (TF32 allowed) applies."""
    if provider == CUDA_EP:
        return {"use_tf32": "0"} if precision == "fp32" else {}
    if provider != TRT_EP:
        return {}
    dims = "x".join(str(d) for d in input_shape[1:])
    cache_dir.mkdir(parents=True, exist_ok=True)
    return {
        "trt_engine_cache_enable": "True", "trt_timing_cache_enable": "True",
        "trt_engine_cache_path": str(cache_dir), "trt_timing_cache_path": str(cache_dir),
        "trt_fp16_enable": "True" if precision == "fp16" else "False",
        "trt_profile_min_shapes": f"{input_name}:1x{dims}",
        "trt_profile_opt_shapes": f"{input_name}:{min(32, max_batch)}x{dims}",
        "trt_profile_max_shapes": f"{input_name}:{max_batch}x{dims}",
    }


class OrtTower:
    """One tower's InferenceSession: numpy [B, ...] in, float32 [B, D] out."""

    def __init__(self, path: Path, spec: GraphSpec, device: str = "cpu", threads: int = 0,
                 precision: str = "fp32", cache_dir: Path | None = None, max_batch: int = 256,
                 only: Sequence[str] | None = None) -> None:
        ort = require_onnxruntime()
        if not path.is_file():
            raise ExportError(f"graph {path} is missing; re-export with `python -m export onnx`.")
        available = [p for p in ort.get_available_providers() if only is None or p in only or p == CPU_EP]
        available, skipped = usable_providers(device, available)
        wanted, why = choose_providers(device, available)
        why = "; ".join(w for w in (why, skipped) if w)
        cache = (cache_dir or path.parent / "cache") / "ort-trt"
        opts = [provider_options(p, cache, spec.input, spec.input_shape, max_batch, precision) for p in wanted]
        # GPU sessions keep their own arenas: sharing one was measured on CPU only
        shared = device == "cpu" and share_cpu_arena(ort)
        with _engine_cache_lock(cache if TRT_EP in wanted else None):
            self.session = _open_session(ort, path, list(zip(wanted, opts)), threads, precision, shared)
        self.providers: list[str] = self.session.get_providers()  # what ORT actually enabled
        _require_started(ort, path, wanted, self.providers)
        _log_choice(path, device, wanted, self.providers, why)
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        self.input_dtype = ORT_DTYPES.get(inp.type, np.float32)  # float16 if the graph takes half pixels
        self.on_gpu = self.providers[0] in GPU_EPS
        self.max_batch = max_batch if self.providers[0] == TRT_EP else None  # TRT EP profile caps the batch

    def run(self, x: np.ndarray) -> np.ndarray:
        """[B, ...] -> float32 [B, D]."""
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        if self.on_gpu:
            return self._run_bound(x)
        return self.session.run([self.output_name], {self.input_name: x})[0].astype(np.float32, copy=False)

    def _run_bound(self, x: np.ndarray) -> np.ndarray:
        """I/O binding: one host->device copy in, output allocated on the device, one copy back."""
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, x)
        binding.bind_output(self.output_name, "cuda")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0].astype(np.float32, copy=False)


def _engine_cache_lock(cache: Path | None):
    """The TensorRT EP builds its engines while the session is created and writes them into `cache` itself, not
    atomically: replicas sharing the cache take turns, so the later ones load finished engines."""
    return exclusive_lock(cache, "building ONNX Runtime TensorRT engines") if cache else contextlib.nullcontext()


def _open_session(ort: Any, path: Path, providers: list, threads: int, precision: str, shared_arena: bool):
    try:
        # enable_fallback=0: ORT would otherwise re-create a session that failed on a GPU provider (and re-run a
        # failed call) on CUDA/CPU alone, without the provider options and disabled optimisers given here.
        return ort.InferenceSession(str(path), session_options(ort, threads, shared_arena), providers=providers,
                                    disabled_optimizers=disabled_optimizers(precision), enable_fallback=0)
    except Exception as e:  # ORT raises its own Fail/InvalidGraph/... types
        raise ExportError(f"onnxruntime cannot load {path}: {e}. The file is damaged or not an ONNX graph; "
                          f"re-export with `python -m export onnx`.") from e


def _require_started(ort: Any, path: Path, wanted: list[str], providers: list[str]) -> None:
    """Every provider asked for is running, or an error that says which libraries to look at."""
    missing = [p for p in wanted if p not in providers]
    if not missing:
        return
    cuda = getattr(ort, "cuda_version", "") or "?"
    raise ExportError(f"onnxruntime could not start {', '.join(missing)} for {path.name} (it runs {providers}; its "
                      f"warning above names the library that failed to load). onnxruntime {ort.__version__} is built "
                      f"for CUDA {cuda}: torch, cuDNN and TensorRT must be builds for the same CUDA major. "
                      f"`python -m export.runtime.gpu_libs` shows what is installed.")


def _log_choice(path: Path, device: str, wanted: list[str], providers: list[str], why: str) -> None:
    """One line per tower: what runs and why; a WARNING when CUDA was asked for and CPU is what runs."""
    degraded = device == "cuda" and providers[0] == CPU_EP
    log.log(logging.WARNING if degraded else logging.INFO, "onnxruntime %s: running on %s (%s)", path.name,
            providers, why)


def onnx_encoders(root: Path, manifest: Manifest, device: str = "cpu", threads: int = 0, cache: Path | None = None,
                  max_batch: int = 256, only: Sequence[str] | None = None) -> Encoders:
    """The two ONNX graphs of an export directory on ONNX Runtime. cache: where the TensorRT execution provider keeps
    the engines ONNX Runtime builds itself (default <root>/cache); `only`: restrict the providers (plus CPU)."""
    if manifest.kind != "onnx":
        raise ExportError(f"{root} holds TensorRT engines, not ONNX graphs: load it with backend='tensorrt', "
                          f"or point at the ONNX export it was built from.")
    cache = cache or root / "cache"
    # The text tower first: a session peaks above what it keeps while it is built (ViT-B-32 fp32: text +96 MiB,
    # image +35 MiB), and the later one's excess comes on top of the earlier one's whole size; this order peaked
    # at 681 MiB against 741 MiB image first (docs/benchmarks/README.md, "Lean serving").
    with large_frees_returned():  # what a session frees while it is built leaves the process (heap.py)
        text, image = [OrtTower(root / spec.file, spec, device, threads, manifest.precision, cache, max_batch, only)
                       for spec in (manifest.text, manifest.image)]
    return Encoders(manifest, root, image, text, device=device)
