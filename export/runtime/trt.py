"""TensorRT engines behind the towers interface (TensorRT 10 Python API): one engine per tower, one CUDA stream.

Buffers and the stream come from NVIDIA's CUDA runtime bindings (cuda-python, in the `gpu` extra), not torch, so a
server running engines imports no torch. Batches larger than the optimisation profile's max are split; smaller
than its min are zero-padded (padded rows are dropped). Loading never builds an engine: `python -m export tensorrt`
does, and an ONNX export given to this backend is refused with that command.

NOT RUN YET: written against the TensorRT 10 and cuda-python documentation; no GPU with TensorRT was available when
it was written (see docs/export.md, "What has and has not run on a GPU").
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import ExportError
from export.manifest import Manifest
from export.runtime.base import Encoders
from export.runtime.deps import require_cudart, require_tensorrt

log = logging.getLogger(__name__)


def trt_logger(trt: Any):
    """One process-wide TensorRT logger (TensorRT wants a single ILogger)."""
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


_LOGGER = None


def cuda_call(result: Any) -> Any:
    """cuda-python returns (error, value...): the value(s), or an ExportError naming the CUDA error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:  # cudaSuccess
        raise ExportError(f"CUDA runtime error {err}")
    return values[0] if len(values) == 1 else tuple(values)


def gpu_name(device_index: int = 0) -> str:
    """The GPU's model name as the driver reports it (what engines are bound to), e.g. 'NVIDIA H100 80GB HBM3'."""
    prop = cuda_call(require_cudart().cudaGetDeviceProperties(device_index))
    name = prop.name
    return (name.decode() if isinstance(name, bytes) else str(name)).rstrip("\x00")


def deserialize_engine(path: Path):
    """Load a serialized engine, with a clear error when it was built for another GPU or TensorRT version."""
    trt = require_tensorrt()
    if not path.is_file():
        raise ExportError(f"TensorRT engine {path} is missing; build it with `python -m export tensorrt`.")
    runtime = trt.Runtime(trt_logger(trt))
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise ExportError(f"TensorRT {trt.__version__} cannot load {path}: engines only load on the TensorRT "
                          f"version and GPU model that built them; rebuild with `python -m export tensorrt`.")
    return runtime, engine


def check_engine_target(manifest: Manifest, root: Path) -> None:
    """Refuse engines built for another TensorRT version or GPU model, before TensorRT fails obscurely."""
    trt = require_tensorrt()
    built = manifest.tensorrt or {}
    here = {"version": trt.__version__, "gpu": gpu_name()}
    diffs = [f"{k} {built.get(k)!r} at build, {v!r} here" for k, v in here.items() if built.get(k) != v]
    if diffs:
        raise ExportError(f"TensorRT engines in {root} were built for another target ({'; '.join(diffs)}); "
                          f"rebuild them here with `python -m export tensorrt --onnx <onnx export> --out {root}`.")


def tensorrt_encoders(root: Path, manifest: Manifest, device: str) -> Encoders:
    """The engines of a `python -m export tensorrt` directory. An ONNX export is refused, never built from."""
    if device != "cuda":
        raise ExportError("backend='tensorrt' runs on device='cuda' only; use backend='onnx' on CPU.")
    if manifest.kind != "tensorrt":
        raise ExportError(f"{root} is an ONNX export, and serving never builds TensorRT engines: build them once "
                          f"with `python -m export tensorrt --onnx {root} --out {root}-trt` (on this GPU model) and "
                          f"point CLIP_EXPORT_DIR at {root}-trt, or serve the graphs with backend='onnx'.")
    check_engine_target(manifest, root)
    log.info("tensorrt engines from %s", root)
    return Encoders(manifest, root, TrtTower(root / manifest.image.file), TrtTower(root / manifest.text.file),
                    device="cuda")


class TrtTower:
    """One tower's engine: numpy [B, ...] in, float32 [B, D] out, on one CUDA stream."""

    def __init__(self, engine_path: Path, device_index: int = 0) -> None:
        trt, self.cudart = require_tensorrt(), require_cudart()
        cuda_call(self.cudart.cudaSetDevice(device_index))
        self.runtime, self.engine = deserialize_engine(engine_path)  # keep the runtime alive with the engine
        self.context = self.engine.create_execution_context()
        self.input_name, self.output_name = _io_names(trt, self.engine)
        lo, _, hi = self.engine.get_tensor_profile_shape(self.input_name, 0)  # (min, opt, max) of profile 0
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.item_shape = tuple(int(hi[i]) for i in range(1, len(hi)))  # [3, H, W] or [L]
        self.in_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
        self.out_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output_name)))
        out_shape = self.engine.get_tensor_shape(self.output_name)  # Dims [-1, D]
        self.out_dim = int(out_shape[len(out_shape) - 1])  # D (static); Dims takes no negative index
        self.stream = cuda_call(self.cudart.cudaStreamCreate())
        self._allocate()
        self.providers = [f"TensorRT {trt.__version__} ({gpu_name(device_index)})"]

    def _allocate(self) -> None:
        """Device buffers for the largest batch the profile allows, bound to the context once."""
        self.in_bytes = self.max_batch * int(np.prod(self.item_shape)) * self.in_dtype.itemsize
        self.out_bytes = self.max_batch * self.out_dim * self.out_dtype.itemsize
        self.d_in = cuda_call(self.cudart.cudaMalloc(self.in_bytes))
        self.d_out = cuda_call(self.cudart.cudaMalloc(self.out_bytes))
        self.context.set_tensor_address(self.input_name, int(self.d_in))
        self.context.set_tensor_address(self.output_name, int(self.d_out))

    def run(self, x: np.ndarray) -> np.ndarray:
        """[B, ...] -> float32 [B, D], in chunks of at most max_batch."""
        if tuple(x.shape[1:]) != self.item_shape:
            raise ValueError(f"engine {self.input_name} takes [B, {', '.join(map(str, self.item_shape))}], "
                             f"got {list(x.shape)}")
        parts = [self._run_chunk(x[i:i + self.max_batch]) for i in range(0, len(x), self.max_batch)]
        return np.concatenate(parts) if parts else np.zeros((0, self.out_dim), np.float32)

    def _run_chunk(self, chunk: np.ndarray) -> np.ndarray:
        n = len(chunk)
        padded = max(n, self.min_batch)  # the profile refuses batches below its min: pad with zeros
        host_in = np.zeros((padded, *self.item_shape), self.in_dtype)
        host_in[:n] = chunk
        host_out = np.empty((padded, self.out_dim), self.out_dtype)  # [padded, D]
        rt, h2d, d2h = self.cudart, self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, \
            self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_call(rt.cudaMemcpyAsync(self.d_in, host_in.ctypes.data, host_in.nbytes, h2d, self.stream))
        self.context.set_input_shape(self.input_name, (padded, *self.item_shape))
        if not self.context.execute_async_v3(int(self.stream)):
            raise ExportError(f"TensorRT execution failed for {self.input_name} batch {padded}")
        cuda_call(rt.cudaMemcpyAsync(host_out.ctypes.data, self.d_out, host_out.nbytes, d2h, self.stream))
        cuda_call(rt.cudaStreamSynchronize(self.stream))  # host_in / host_out stay alive until here
        return host_out[:n].astype(np.float32, copy=False)  # [n, D]


def _io_names(trt: Any, engine: Any) -> tuple[str, str]:
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ExportError(f"expected one input and one output tensor per tower engine, got {inputs} -> {outputs}")
    return inputs[0], outputs[0]
