"""The shared libraries ONNX Runtime's GPU providers load, found before a session needs them, and a check that the
CUDA builds of torch, onnxruntime-gpu and TensorRT agree.

    python -m export.runtime.gpu_libs [--need-gpu]   # what is installed; exit 1 when a GPU provider cannot load

ONNX Runtime's TensorRT provider (libonnxruntime_providers_tensorrt.so) links libnvinfer.so.10, which pip's
TensorRT wheel keeps inside its own package (tensorrt_libs/), on no library path. `import tensorrt` happens to load
it (its __init__ imports tensorrt_libs, which dlopens every .so beside it), so a process that imported tensorrt
finds the provider and one that did not (the server) silently runs on the CUDA provider. `preload_tensorrt`
loads them on purpose, without importing the TensorRT bindings. The CUDA provider needs libcudart, libcublas and
libcudnn of the CUDA major onnxruntime-gpu was built for; `import torch` loads torch's, so the two must agree.
The Dockerfile runs this module at image build, so a mismatch fails the build rather than the first request.
A build has no NVIDIA driver, and onnxruntime-gpu's CUDA provider library links the driver's libcuda.so.1, so
there the check dlopens what the providers link (CUDA, cuBLAS, cuDNN of onnxruntime's CUDA major, TensorRT's
files) instead of opening sessions; with a driver it opens a one-node session per provider.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import importlib.metadata
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
TENSORRT_LIBS = "tensorrt_libs"  # module of pip's tensorrt-cuXX-libs wheel
NVINFER = "libnvinfer.so.10"  # what ORT's TensorRT provider links (the `gpu` extra pins tensorrt < 11)
DRIVER = "libcuda.so.1"  # the driver's library; a `docker build` has none (the toolkit mounts it at run time)
# What each provider's library links, by soname ({M}: onnxruntime's CUDA major), read with readelf from
# onnxruntime-gpu 1.31 (libcuda.so.1 aside); cuDNN 9 is what ORT's own message requires.
PROVIDER_LIBS = {
    "CUDAExecutionProvider": ["libcudart.so.{M}", "libcublasLt.so.{M}", "libcublas.so.{M}", "libcurand.so.10",
                              "libcudnn.so.9"],
    "TensorrtExecutionProvider": ["libcudart.so.{M}", "libcublas.so.{M}", "libcudnn.so.9"],
}
TENSORRT_FILES = ("libnvinfer.so.10", "libnvonnxparser.so.10")


def tensorrt_installed() -> bool:
    """True when pip's TensorRT libraries are installed; imports nothing (tests use this to decide skips)."""
    return importlib.util.find_spec(TENSORRT_LIBS) is not None or importlib.util.find_spec("tensorrt") is not None


def preload_tensorrt() -> str | None:
    """Load TensorRT's libraries into this process for ORT's TensorRT provider; None when loaded, else why not."""
    if importlib.util.find_spec(TENSORRT_LIBS) is not None:
        importlib.import_module(TENSORRT_LIBS)  # dlopens tensorrt_libs/*.so*; errors are swallowed, so check below
    try:
        ctypes.CDLL(NVINFER)  # found by soname once loaded above, or on the library path of a system install
    except OSError as e:
        return (f"TensorRT libraries not loadable ({e}); install the `gpu` extra (pip install 'clip-serve[gpu]', "
                f"which brings tensorrt) or put {NVINFER} on LD_LIBRARY_PATH")
    return None


def cuda_majors() -> dict[str, str | None]:
    """CUDA major version each installed GPU library was built for (None: not installed or a CPU build)."""
    import torch

    majors: dict[str, str | None] = {"torch": _major(torch.version.cuda)}
    try:
        ort = importlib.import_module("onnxruntime")
        majors["onnxruntime"] = _major(getattr(ort, "cuda_version", "") or None)
    except ImportError:
        majors["onnxruntime"] = None
    majors["tensorrt"] = _tensorrt_cuda_major()
    return majors


def _major(version: str | None) -> str | None:
    return version.split(".")[0] if version else None


def _tensorrt_cuda_major() -> str | None:
    """From the distribution that provides tensorrt_libs, e.g. tensorrt_cu13_libs -> '13'."""
    for dist in importlib.metadata.packages_distributions().get(TENSORRT_LIBS, []):
        m = re.search(r"cu(\d+)", dist)
        if m:
            return m.group(1)
    return None


def disagreement(majors: dict[str, str | None]) -> str | None:
    """A sentence naming the libraries whose CUDA majors differ, or None when all installed ones agree."""
    built = {name: major for name, major in majors.items() if major}
    if len(set(built.values())) <= 1:
        return None
    return ("CUDA major versions differ: " + ", ".join(f"{n} built for CUDA {m}" for n, m in built.items())
            + "; install builds of one CUDA major (torch's index, onnxruntime-gpu and tensorrt-cuXX).")


def try_provider(ort: Any, provider: str) -> tuple[str, str]:
    """Open a one-node session on `provider` (fallback off): ("runs" | "loads" | "missing", what happened).

    ORT skips a provider whose library (or a library it links) does not load, with a warning and no error: that
    is "missing". An exception means the library loaded and the provider failed to start, which is what a machine
    without a usable GPU gives (a `docker build`: "CUDA failure 35: CUDA driver version is insufficient ..."):
    "loads". Only a GPU host can say "runs".
    """
    try:
        session = ort.InferenceSession(_tiny_graph(), providers=[provider, "CPUExecutionProvider"],
                                       enable_fallback=0)
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
        return "loads", f"library loads; the provider did not start here: {str(e).splitlines()[0][:200]}"
    if provider not in session.get_providers():
        return "missing", (f"its library or one it links did not load (onnxruntime runs {session.get_providers()}; "
                           f"its warning above names the library)")
    return "runs", f"a session runs on {session.get_providers()[0]}"


def driver_present() -> bool:
    try:
        ctypes.CDLL(DRIVER)
    except OSError:
        return False
    return True


def cuda_device_count() -> int:
    """CUDA devices the driver sees (0 without a driver or a device), asked through the driver API itself, so
    "is there a GPU" needs neither torch nor a CUDA runtime library."""
    try:
        driver = ctypes.CDLL(DRIVER)
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:  # 0 is CUDA_SUCCESS
        return 0
    return count.value


def libraries_present(provider: str, cuda_major: str | None) -> tuple[str, str]:
    """Without a driver ORT cannot even open its CUDA provider library (it links libcuda.so.1), so check what
    else the provider links instead: ("present" | "missing", what). torch must be imported first (it loads its
    CUDA libraries, which must be the ones ORT finds)."""
    missing = []
    for name in PROVIDER_LIBS[provider]:
        try:
            ctypes.CDLL(name.format(M=cuda_major))
        except OSError as e:
            missing.append(str(e))
    if provider == "TensorrtExecutionProvider":
        spec = importlib.util.find_spec(TENSORRT_LIBS)
        where = Path(spec.origin).parent if spec and spec.origin else None
        missing += [f"{f}: not in {TENSORRT_LIBS} ({where or 'not installed'})" for f in TENSORRT_FILES
                    if where is None or not (where / f).is_file()]
    if missing:
        return "missing", "; ".join(missing)
    return "present", "no driver here (so no session opened); the libraries it links are present"


def _tiny_graph() -> bytes:
    """y = x + x on float [1, 4]: enough for a provider to claim a node."""
    from onnx import TensorProto, helper

    node = helper.make_node("Add", ["x", "x"], ["y"])
    graph = helper.make_graph([node], "gpu_libs_check", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what onnxruntime 1.14 and later read; newer onnx writes versions older ORTs refuse
    return model.SerializeToString()


def check(need_gpu: bool = False, allow_cpu_build: bool = False) -> int:
    """Print CUDA majors and whether each GPU provider loads; 1 when serving on GPU would not work as asked.

    need_gpu: a provider that loads but cannot start (no GPU) fails too; leave it off where no GPU is visible.
    allow_cpu_build: an onnxruntime without GPU providers is not a failure (check the CUDA majors only).
    """
    majors = cuda_majors()
    print("CUDA majors:", ", ".join(f"{k} {v or '-'}" for k, v in majors.items()))
    problems = [p for p in [disagreement(majors)] if p]
    try:
        ort = importlib.import_module("onnxruntime")
    except ImportError as e:
        print(f"onnxruntime: not installed ({e})")
        return 1 if problems or not allow_cpu_build else 0
    available = ort.get_available_providers()
    print(f"onnxruntime {ort.__version__} (built for CUDA {getattr(ort, 'cuda_version', '') or '-'}): {available}")
    if importlib.util.find_spec("onnx") is None and any(p in available for p in GPU_PROVIDERS):
        problems.append("onnx is not installed: cannot build the one-node graph that opens a session")
        available = []
    for provider in GPU_PROVIDERS:
        if provider not in available:
            print(f"{provider}: not in this onnxruntime build")
            if not allow_cpu_build:
                problems.append(f"{provider} is not in onnxruntime {ort.__version__} (is the CPU package "
                                f"onnxruntime installed beside onnxruntime-gpu? install only one)")
            continue
        if not driver_present():
            status, what = libraries_present(provider, majors["onnxruntime"])
            print(f"{provider}: {status}: {what}")
            if status == "missing" or need_gpu:
                problems.append(f"{provider}: {what}")
            continue
        why_not = preload_tensorrt() if provider == "TensorrtExecutionProvider" else None
        status, what = ("missing", why_not) if why_not else try_provider(ort, provider)
        print(f"{provider}: {status}: {what}")
        if status == "missing" or (status == "loads" and need_gpu):
            problems.append(f"{provider}: {what}")
    for p in problems:
        print("PROBLEM:", p)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--need-gpu", action="store_true", help="also fail when a provider cannot start (no GPU)")
    p.add_argument("--allow-cpu-build", action="store_true",
                   help="exit 0 when onnxruntime has no GPU providers (check the CUDA majors only)")
    args = p.parse_args(argv)
    return check(need_gpu=args.need_gpu, allow_cpu_build=args.allow_cpu_build)


if __name__ == "__main__":
    sys.exit(main())
