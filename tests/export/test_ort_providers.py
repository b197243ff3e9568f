"""ONNX Runtime's GPU providers, as far as they can be checked without a GPU: TensorRT's libraries are loaded
before a TensorRT EP session (the server never imports tensorrt), a provider that did not start is an error,
ORT's own fallback is off, the CUDA EP runs fp32 without TF32, and the image-build check's verdicts.

ORT's InferenceSession is replaced by a recording stand-in that "starts" the providers a test says; everything
else (provider choice, options, the library loading) is the real code.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import onnxruntime
import pytest

from export.errors import ExportError
from export.manifest import GraphSpec
from export.runtime import gpu_libs, ort as ort_mod
from export.runtime.ort import CPU_EP, CUDA_EP, TRT_EP, OrtTower, provider_options

SPEC = GraphSpec(file="image.onnx", input="pixels", output="embedding", input_dtype="float32",
                 input_shape=[-1, 3, 64, 64])


class FakeOrt:
    """onnxruntime with GPU providers listed; sessions start only the providers in `starts`."""

    cuda_version = "13.0"
    __version__ = onnxruntime.__version__
    SessionOptions, ExecutionMode = onnxruntime.SessionOptions, onnxruntime.ExecutionMode
    GraphOptimizationLevel = onnxruntime.GraphOptimizationLevel

    def __init__(self, available: list[str], starts: set[str], events: list) -> None:
        self.available, self.starts, self.events = available, starts, events

    def get_available_providers(self) -> list[str]:
        return list(self.available)

    def InferenceSession(self, path, opts, providers, **kwargs):  # noqa: N802 - ORT's name
        names = [p for p, _ in providers]
        self.events.append(("session", names, dict(providers), kwargs))
        io = [SimpleNamespace(name="pixels", type="tensor(float)")], [SimpleNamespace(name="embedding",
                                                                                      type="tensor(float)")]
        started = [p for p in names if p in self.starts or p == CPU_EP]
        return SimpleNamespace(get_providers=lambda: started, get_inputs=lambda: io[0], get_outputs=lambda: io[1])


@pytest.fixture
def graph(tmp_path) -> Path:
    path = tmp_path / "image.onnx"
    path.write_bytes(b"stand-in: the session is faked")
    return path


@pytest.fixture
def fake_trt_libs(tmp_path, monkeypatch):
    """A `tensorrt_libs` package that records its import, and a dlopen that finds libnvinfer only after it."""
    events: list = []
    pkg = tmp_path / "site" / "tensorrt_libs"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("import sys\nsys.modules['tests._trt_events'].append(('tensorrt_libs',))\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(sys.modules, "tests._trt_events", events)
    monkeypatch.delitem(sys.modules, "tensorrt_libs", raising=False)

    def cdll(name):
        if name == gpu_libs.NVINFER and ("tensorrt_libs",) in events:
            return object()
        raise OSError(f"{name}: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(gpu_libs.ctypes, "CDLL", cdll)
    return events


def use(monkeypatch, fake: FakeOrt) -> None:
    monkeypatch.setattr(ort_mod, "require_onnxruntime", lambda: fake)


def test_tensorrt_libraries_are_loaded_before_a_tensorrt_session(graph, fake_trt_libs, monkeypatch):
    use(monkeypatch, FakeOrt([TRT_EP, CUDA_EP, CPU_EP], {TRT_EP, CUDA_EP}, fake_trt_libs))
    tower = OrtTower(graph, SPEC, device="cuda")
    assert fake_trt_libs[0] == ("tensorrt_libs",)  # before the session was created
    assert fake_trt_libs[1][0] == "session" and fake_trt_libs[1][1] == [TRT_EP, CUDA_EP, CPU_EP]
    assert tower.providers[0] == TRT_EP


def test_without_tensorrt_libraries_the_tensorrt_ep_is_skipped_and_says_why(graph, monkeypatch, caplog):
    monkeypatch.setattr(gpu_libs.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(gpu_libs.ctypes, "CDLL", lambda name: (_ for _ in ()).throw(OSError(f"{name}: not found")))
    events: list = []
    use(monkeypatch, FakeOrt([TRT_EP, CUDA_EP, CPU_EP], {TRT_EP, CUDA_EP}, events))
    with caplog.at_level("INFO", logger="export.runtime.ort"):
        tower = OrtTower(graph, SPEC, device="cuda")
    assert events[0][1] == [CUDA_EP, CPU_EP] and tower.providers[0] == CUDA_EP
    assert "TensorrtExecutionProvider skipped: TensorRT libraries not loadable" in caplog.text


def test_tensorrt_ep_sessions_are_created_under_the_engine_cache_lock(graph, fake_trt_libs, monkeypatch, tmp_path):
    """ORT's TensorRT EP writes its engine cache itself while the session is created: replicas take turns."""
    import fcntl

    held: list[bool] = []
    fake = FakeOrt([TRT_EP, CUDA_EP, CPU_EP], {TRT_EP, CUDA_EP}, fake_trt_libs)
    make = fake.InferenceSession

    def session(*args, **kwargs):
        with open(tmp_path / "cache" / "ort-trt" / ".build.lock", "a+b") as f:  # another replica's attempt
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
            except BlockingIOError:
                held.append(True)
        return make(*args, **kwargs)

    fake.InferenceSession = session
    use(monkeypatch, fake)
    OrtTower(graph, SPEC, device="cuda", cache_dir=tmp_path / "cache")
    assert held == [True]


def test_a_provider_that_did_not_start_is_an_error(graph, monkeypatch):
    """ORT skips a provider whose CUDA/cuDNN libraries fail to load with a warning only; here that is an error."""
    use(monkeypatch, FakeOrt([CUDA_EP, CPU_EP], set(), []))
    with pytest.raises(ExportError, match="could not start CUDAExecutionProvider.*built for CUDA 13.0"):
        OrtTower(graph, SPEC, device="cuda")


def test_fp32_on_the_cuda_ep_runs_without_tf32(graph, monkeypatch):
    events: list = []
    use(monkeypatch, FakeOrt([CUDA_EP, CPU_EP], {CUDA_EP}, events))
    OrtTower(graph, SPEC, device="cuda", precision="fp32")
    OrtTower(graph, SPEC, device="cuda", precision="fp16")
    assert events[0][2][CUDA_EP] == {"use_tf32": "0"} and events[1][2][CUDA_EP] == {}
    assert provider_options(CUDA_EP, graph.parent, "pixels", [-1, 3, 64, 64], 8, "fp32") == {"use_tf32": "0"}


def test_onnxruntime_fallback_is_off(graph, monkeypatch, bundled_export):
    events: list = []
    use(monkeypatch, FakeOrt([CUDA_EP, CPU_EP], {CUDA_EP}, events))
    OrtTower(graph, SPEC, device="cuda")
    assert events[0][3]["enable_fallback"] == 0
    monkeypatch.undo()
    real = OrtTower(bundled_export[0] / "image.onnx", SPEC, device="cpu")
    assert real.session._enable_fallback is False  # what ORT reads before re-creating a session or a run


def test_image_build_check_verdicts(monkeypatch):
    """`python -m export.runtime.gpu_libs` in the Dockerfile: a provider whose library did not load fails the
    build; one that loaded but cannot start (no GPU during `docker build`) passes unless --need-gpu."""
    def session(starts: bool, raises: str | None):
        def make(model, providers, enable_fallback):
            assert enable_fallback == 0
            if raises:
                raise RuntimeError(raises)
            return SimpleNamespace(get_providers=lambda: providers if starts else [CPU_EP])
        return SimpleNamespace(InferenceSession=make)

    no_gpu = "CUDA failure 35: CUDA driver version is insufficient for CUDA runtime version ; GPU=0 ; hostname=b"
    assert gpu_libs.try_provider(session(True, None), CUDA_EP)[0] == "runs"
    assert gpu_libs.try_provider(session(False, None), CUDA_EP)[0] == "missing"
    assert gpu_libs.try_provider(session(True, no_gpu), CUDA_EP)[0] == "loads"


def test_cuda_major_disagreement_is_named():
    assert gpu_libs.disagreement({"torch": "13", "onnxruntime": "13", "tensorrt": None}) is None
    msg = gpu_libs.disagreement({"torch": "13", "onnxruntime": "12", "tensorrt": "13"})
    assert msg and "onnxruntime built for CUDA 12" in msg and "torch built for CUDA 13" in msg


def test_without_a_driver_the_image_check_looks_at_the_linked_libraries(monkeypatch, tmp_path):
    """A `docker build` has no libcuda.so.1, which onnxruntime-gpu's CUDA provider links: there the check dlopens
    the CUDA libraries of onnxruntime's CUDA major and looks for TensorRT's files instead of opening sessions."""
    loadable = {"libcudart.so.13", "libcublasLt.so.13", "libcublas.so.13", "libcurand.so.10", "libcudnn.so.9"}

    def cdll(name):
        if name not in loadable:
            raise OSError(f"{name}: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(gpu_libs.ctypes, "CDLL", cdll)
    assert not gpu_libs.driver_present()
    assert gpu_libs.libraries_present(CUDA_EP, "13")[0] == "present"
    status, what = gpu_libs.libraries_present(CUDA_EP, "12")  # onnxruntime built for CUDA 12, torch's are 13
    assert status == "missing" and "libcublas.so.12" in what
    libs = tmp_path / "tensorrt_libs"
    libs.mkdir()
    (libs / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tensorrt_libs", raising=False)
    assert "libnvinfer.so.10: not in tensorrt_libs" in gpu_libs.libraries_present(TRT_EP, "13")[1]
    for f in gpu_libs.TENSORRT_FILES:
        (libs / f).write_bytes(b"")
    assert gpu_libs.libraries_present(TRT_EP, "13")[0] == "present"
