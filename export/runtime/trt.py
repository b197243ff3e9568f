"""TensorRT engine runner (TensorRT 10 Python API): one engine per tower, torch CUDA stream and buffers.

Device buffers, pinned host buffers and the stream are torch objects, so no pycuda / cuda-python is needed:
a GPU machine with a CUDA build of torch plus the `gpu` extra has everything. Batches larger than the
optimisation profile's max are split; smaller than its min are zero-padded (padded rows are dropped).

NOT RUN YET: written against the TensorRT 10 documentation; no GPU with TensorRT was available when it was
written (see docs/export.md, "What has and has not run on a GPU").
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import ExportError
from export.runtime.deps import require_cuda_torch, require_tensorrt

log = logging.getLogger(__name__)


def trt_logger(trt: Any):
    """One process-wide TensorRT logger (TensorRT wants a single ILogger)."""
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


_LOGGER = None


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


def check_engine_target(manifest: Any, root: Path) -> None:
    """Refuse engines built for another TensorRT version or GPU model, before TensorRT fails obscurely."""
    trt, torch = require_tensorrt(), require_cuda_torch()
    built = manifest.tensorrt or {}
    here = {"version": trt.__version__, "gpu": torch.cuda.get_device_name()}
    diffs = [f"{k} {built.get(k)!r} at build, {v!r} here" for k, v in here.items() if built.get(k) != v]
    if diffs:
        raise ExportError(f"TensorRT engines in {root} were built for another target ({'; '.join(diffs)}); "
                          f"rebuild them here with `python -m export tensorrt --onnx <onnx export> --out {root}`, "
                          f"or load the ONNX export with backend='tensorrt' to build and cache engines.")


class TrtTower:
    """One tower's engine: numpy [B, ...] in, float32 [B, D] out, on one CUDA stream."""

    def __init__(self, engine_path: Path, device_index: int = 0) -> None:
        torch = require_cuda_torch()
        trt = require_tensorrt()
        self.torch, self.device = torch, torch.device("cuda", device_index)
        self.runtime, self.engine = deserialize_engine(engine_path)  # keep the runtime alive with the engine
        self.context = self.engine.create_execution_context()
        self.input_name, self.output_name = _io_names(trt, self.engine)
        lo, _, hi = self.engine.get_tensor_profile_shape(self.input_name, 0)  # (min, opt, max) of profile 0
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.item_shape = tuple(int(hi[i]) for i in range(1, len(hi)))  # [3, H, W] or [L]
        self.stream = torch.cuda.Stream(device=self.device)
        self._allocate(trt)
        self.providers = [f"TensorRT {trt.__version__} ({torch.cuda.get_device_name(self.device)})"]

    def _allocate(self, trt: Any) -> None:
        """Device and pinned host buffers for the largest batch the profile allows."""
        torch = self.torch
        in_dtype = _torch_dtype(torch, trt, self.engine.get_tensor_dtype(self.input_name))
        out_dtype = _torch_dtype(torch, trt, self.engine.get_tensor_dtype(self.output_name))
        out_shape = self.engine.get_tensor_shape(self.output_name)  # Dims [-1, D]
        out_dim = int(out_shape[len(out_shape) - 1])  # D (static); Dims takes no negative index
        in_shape, out_shape = (self.max_batch, *self.item_shape), (self.max_batch, out_dim)  # [N, ...], [N, D]
        self.d_in = torch.empty(in_shape, dtype=in_dtype, device=self.device)
        self.d_out = torch.empty(out_shape, dtype=out_dtype, device=self.device)
        self.h_in = torch.zeros(in_shape, dtype=in_dtype).pin_memory()
        self.h_out = torch.empty(out_shape, dtype=out_dtype).pin_memory()
        self.context.set_tensor_address(self.input_name, self.d_in.data_ptr())
        self.context.set_tensor_address(self.output_name, self.d_out.data_ptr())

    def run(self, x: np.ndarray) -> np.ndarray:
        """[B, ...] -> float32 [B, D], in chunks of at most max_batch."""
        if tuple(x.shape[1:]) != self.item_shape:
            raise ValueError(f"engine {self.input_name} takes [B, {', '.join(map(str, self.item_shape))}], "
                             f"got {list(x.shape)}")
        parts = [self._run_chunk(x[i:i + self.max_batch]) for i in range(0, len(x), self.max_batch)]
        return np.concatenate(parts) if parts else np.zeros((0, self.d_out.shape[1]), np.float32)

    def _run_chunk(self, chunk: np.ndarray) -> np.ndarray:
        n = len(chunk)
        padded = max(n, self.min_batch)  # the profile refuses batches below its min: pad with zeros
        torch = self.torch
        self.h_in[:n].copy_(torch.from_numpy(np.ascontiguousarray(chunk)).to(self.h_in.dtype))
        self.h_in[n:padded].zero_()
        with torch.cuda.stream(self.stream):
            self.d_in[:padded].copy_(self.h_in[:padded], non_blocking=True)
            self.context.set_input_shape(self.input_name, (padded, *self.item_shape))
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise ExportError(f"TensorRT execution failed for {self.input_name} batch {padded}")
            self.h_out[:padded].copy_(self.d_out[:padded], non_blocking=True)
        self.stream.synchronize()
        return self.h_out[:n].float().numpy().copy()  # [n, D]; copy: the pinned buffer is reused next call


def _io_names(trt: Any, engine: Any) -> tuple[str, str]:
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ExportError(f"expected one input and one output tensor per tower engine, got {inputs} -> {outputs}")
    return inputs[0], outputs[0]


def _torch_dtype(torch: Any, trt: Any, dt: Any):
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
             trt.DataType.INT32: torch.int32, trt.DataType.INT64: torch.int64}
    if dt not in table:
        raise ExportError(f"unsupported TensorRT I/O dtype {dt}")
    return table[dt]
