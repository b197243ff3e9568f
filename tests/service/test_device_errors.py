"""Which encoder failures halve the batch (out of memory) and which take readiness down (the device is broken),
on the messages torch and ONNX Runtime actually raise.

Formats are copied from the libraries: torch's c10/ATen ("CUDA error: ...", "cuDNN error: ...", "CUDA out of
memory. Tried to allocate ...", cuBLAS as "CUDA error: CUBLAS_STATUS_... when calling `...`"), and ONNX Runtime's
cuda_call.cc ("%s failure %d: %s ; GPU=%d ; hostname=%s ; file=%s ; line=%d ; expr=%s; %s", found with `strings`
in libonnxruntime_providers_cuda.so of onnxruntime-gpu 1.31) and bfc_arena.cc ("Failed to allocate memory for
requested buffer of size ", in libonnxruntime.so 1.32), wrapped the way its Python binding wraps a failed Run.
"""

from __future__ import annotations

import pytest

from service.batcher import is_fatal, is_oom

ORT_RUN = ("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running {op} node. "
           "Name:'/visual/transformer/resblocks.0/{op}' Status Message: {msg}")
ORT_CALL = " ; GPU=0 ; hostname=gpu-host ; file=/onnxruntime_src/onnxruntime/core/providers/cuda/cuda_call.cc ; " \
           "line=129 ; expr=cudaStreamSynchronize(stream); "


def ort(op: str, msg: str) -> RuntimeError:
    return RuntimeError(ORT_RUN.format(op=op, msg=msg))


class OutOfMemoryError(RuntimeError):
    """Stands for torch.OutOfMemoryError (torch.cuda.OutOfMemoryError), which CPU builds cannot raise."""


OOM = [
    OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB. GPU 0 has a total capacity of 79.19 GiB of "
                     "which 3.94 MiB is free. Including non-PyTorch memory, this process has 79.18 GiB memory in use."),
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    ort("Conv", "/onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:376 void* onnxruntime::BFCArena::"
                "AllocateRawInternal(size_t, bool, onnxruntime::Stream*, bool, onnxruntime::WaitNotificationFn) "
                "Failed to allocate memory for requested buffer of size 1207959552\n"),
    ort("MatMul", "CUDA failure 2: out of memory" + ORT_CALL),
]
FATAL = [
    RuntimeError("CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be asynchronously "
                 "reported at some other API call, so the stacktrace below might be incorrect.\nFor debugging "
                 "consider passing CUDA_LAUNCH_BLOCKING=1"),
    RuntimeError("CUDA error: device-side assert triggered"),
    RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle, opa, opb, m, n, k, "
                 "&alpha, a, lda, b, ldb, &beta, c, ldc)`"),
    RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"),
    RuntimeError("CUDA driver error: unknown error"),
    ort("MatMul", "CUDA failure 700: an illegal memory access was encountered" + ORT_CALL),
    ort("Gemm", "CUBLAS failure 13: CUBLAS_STATUS_EXECUTION_FAILED" + ORT_CALL),
    ort("Conv", "CUDNN failure 5003: CUDNN_STATUS_EXECUTION_FAILED" + ORT_CALL),
    ort("Softmax", "CUDA failure 719: unspecified launch failure" + ORT_CALL),
]
ORDINARY = [
    ValueError("pixels must have shape [B, 3, 224, 224], got [2, 3, 64, 64]"),
    RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: pixels for the "
                 "following indices index: 2 Got: 64 Expected: 224"),
    RuntimeError("Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu!"),
    RuntimeError("TensorRT execution failed for pixels batch 4"),
]


@pytest.mark.parametrize("exc", OOM, ids=lambda e: str(e).split("Status Message: ")[-1][:50])
def test_out_of_memory_is_recognised_and_not_fatal(exc):
    assert is_oom(exc) and not is_fatal(exc)


@pytest.mark.parametrize("exc", FATAL, ids=lambda e: str(e).split("Status Message: ")[-1][:50])
def test_broken_device_errors_are_fatal(exc):
    assert is_fatal(exc) and not is_oom(exc)


@pytest.mark.parametrize("exc", ORDINARY, ids=lambda e: str(e).split("Status Message: ")[-1][:50])
def test_ordinary_errors_are_neither(exc):
    assert not is_oom(exc) and not is_fatal(exc)


def test_torchs_out_of_memory_type_is_out_of_memory_whatever_its_message():
    assert is_oom(OutOfMemoryError("allocation failed on device 0")) and not is_oom(RuntimeError("allocation failed"))
