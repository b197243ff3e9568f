r"""Build TensorRT engines (TensorRT 10 Python API) from an ONNX export: one engine per tower.

    python -m export tensorrt --onnx exports/vit-b-32 --out exports/vit-b-32-trt [--fp16] [--reuse] \
        [--min-batch 1 --opt-batch 32 --max-batch 256]

This is the only place engines are built: serving loads the engine directory this writes and never builds one
(export/runtime/trt.py refuses an ONNX export with this command).

Engines are specific to the GPU model and TensorRT version that built them, so the manifest records both.
A timing cache (timing.cache) is reused across builds, which makes rebuilding after a restart or for another
profile much faster. Precision: an fp16 ONNX export is built strongly typed (the graph's own types); an fp32
export with --fp16 lets TensorRT pick fp16 kernels (BuilderFlag.FP16, deprecated from TensorRT 10.12 on). fp32
engines are built without TF32 (TensorRT allows it by default; its 10-bit mantissa inputs can break fp32 parity
at 0.99999), and the manifest says so (`tensorrt.tf32`).

Engines, the timing cache and the manifest are written whole (temporary file + rename), under a lock in the output
directory, so build jobs sharing a volume (one init container per pod, say) take turns; with --reuse the later ones
keep the engines the first one built when they come from the same graphs, for the same profile, GPU model and
TensorRT version (export/cache_files.py).

NOT RUN YET: written against the TensorRT 10 documentation; no GPU with TensorRT was available when it was
written (see docs/export.md, "What has and has not run on a GPU").
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from export.cache_files import exclusive_lock, write_atomic
from export.errors import ExportError
from export.manifest import (MANIFEST_FILE, TOKENIZER_CONFIG, GraphSpec, Manifest, hash_files, read_manifest,
                             write_manifest)
from export.runtime.deps import require_tensorrt
from export.runtime.trt import gpu_name, trt_logger

log = logging.getLogger(__name__)

TIMING_CACHE = "timing.cache"
WORKSPACE_BYTES = 4 << 30  # builder scratch memory; ViT-L fits in far less


@dataclass(frozen=True)
class Profile:
    """The batch sizes an engine accepts (min..max) and is tuned for (opt)."""

    min: int = 1
    opt: int = 32
    max: int = 256

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"need 1 <= min-batch <= opt-batch <= max-batch, got {self.min}, {self.opt}, "
                             f"{self.max}")

    def shapes(self, item_shape: list[int]) -> tuple[tuple[int, ...], ...]:
        """(min, opt, max) full input shapes for an input whose per-item shape is `item_shape`."""
        return tuple((b, *item_shape) for b in (self.min, self.opt, self.max))


@dataclass(frozen=True)
class BuildOptions:
    fp16: bool = False  # fp16 kernels for an fp32 ONNX export (an fp16 export is fp16 already)
    profile: Profile = Profile()
    workspace_bytes: int = WORKSPACE_BYTES


def build_engine(onnx_path: Path, engine_path: Path, spec: GraphSpec, precision: str, options: BuildOptions,
                 timing_cache: Path) -> None:
    """Parse one ONNX graph, build a serialized engine for the profile, update the shared timing cache."""
    trt = require_tensorrt()
    builder = trt.Builder(trt_logger(trt))
    strongly_typed = precision == "fp16"  # the graph already says which ops run in half
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger(trt))
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {errors}. Try another --opset "
                          f"when exporting ONNX, or serve this model with backend='onnx'.")
    config = _builder_config(trt, builder, spec, options, timing_cache, strongly_typed)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT could not build an engine from {onnx_path} (see the TensorRT log above); "
                          f"a smaller --max-batch needs less GPU memory.")
    write_atomic(engine_path, bytes(serialized))
    write_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))


def _builder_config(trt: Any, builder: Any, spec: GraphSpec, options: BuildOptions, timing_cache: Path,
                    strongly_typed: bool):
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    if options.fp16 and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
    if not uses_tf32(options, strongly_typed):
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    profile.set_shape(spec.input, *options.profile.shapes(spec.input_shape[1:]))
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)  # a cache from another GPU/version is not reused
    return config


def uses_tf32(options: BuildOptions, strongly_typed: bool) -> bool:
    """TF32 stays allowed (TensorRT's default) only in fp16 engines, whose parity bound (0.999) it cannot reach."""
    return options.fp16 or strongly_typed


def build_tensorrt_export(onnx_dir: str | Path, out_dir: str | Path, options: BuildOptions = BuildOptions(),
                          parity: bool = True, reuse: bool = False) -> Manifest:
    """`python -m export tensorrt`: engines + manifest in out_dir, checked against eager PyTorch.

    reuse: keep an engine directory already built from the same graphs with the same options for this GPU model and
    TensorRT version (what a deploy's build step runs before every start)."""
    src, out = Path(onnx_dir), Path(out_dir)
    onnx_manifest = read_manifest(src)
    if onnx_manifest.kind != "onnx":
        raise ExportError(f"{src} is not an ONNX export (kind={onnx_manifest.kind}); export ONNX first.")
    with exclusive_lock(out, "building TensorRT engines"):
        current = _reusable(out, onnx_manifest, options) if reuse else None
        if current is not None:
            log.info("reusing the TensorRT engines in %s (same graphs, options, GPU and TensorRT)", out)
            return current
        (out / MANIFEST_FILE).unlink(missing_ok=True)  # a build cut short must leave no manifest vouching for it
        engines = _build_both(src, out, onnx_manifest, options)
        extra = _copy_tokenizer_files(src, out, onnx_manifest)
        manifest = _engine_manifest(onnx_manifest, out, engines, extra, options, gpu_name())
        if parity:
            manifest.parity = _parity(out, manifest)
        write_manifest(manifest, out)
    return manifest


def _reusable(out: Path, onnx_manifest: Manifest, options: BuildOptions) -> Manifest | None:
    """The manifest of engines in `out` built from these graphs with these options for this GPU and TensorRT."""
    try:
        built = read_manifest(out)  # every engine's sha256 checked too
    except ExportError:
        return None
    trt = require_tensorrt()
    want = {"version": trt.__version__, "gpu": gpu_name(), "profile": asdict(options.profile),
            "built_from_onnx": dict(onnx_manifest.files), "fp16_flag": options.fp16}
    have = {k: (built.tensorrt or {}).get(k) for k in want}
    return built if built.kind == "tensorrt" and have == want else None


def _build_both(src: Path, out: Path, manifest: Manifest, options: BuildOptions) -> dict[str, GraphSpec]:
    """Build image.engine and text.engine (sharing out/timing.cache); returns their GraphSpecs."""
    specs = {}
    for tower in tqdm(("image", "text"), desc="build tensorrt engines", unit="engine"):
        spec: GraphSpec = getattr(manifest, tower)
        engine_file = f"{tower}.engine"
        log.info("building %s from %s (minutes on first build; the timing cache speeds up later ones)",
                 engine_file, spec.file)
        build_engine(src / spec.file, out / engine_file, spec, manifest.precision, options, out / TIMING_CACHE)
        specs[tower] = replace(spec, file=engine_file)
    return specs


def _copy_tokenizer_files(src: Path, out: Path, manifest: Manifest) -> list[str]:
    """The engines' directory must also tokenise on its own: open_clip's config and the vocabulary file."""
    names = [TOKENIZER_CONFIG] if manifest.tokenizer_source == "." else []
    names += [manifest.tokenizer["vocab"]] if manifest.tokenizer else []
    for name in names:
        shutil.copy2(src / name, out / name)
    return names


def _engine_manifest(onnx_manifest: Manifest, out: Path, engines: dict[str, GraphSpec], extra_files: list[str],
                     options: BuildOptions, gpu: str) -> Manifest:
    """The ONNX manifest with the engines in place of the graphs, plus what the engines are bound to."""
    trt = require_tensorrt()
    return replace(
        onnx_manifest, kind="tensorrt", image=engines["image"], text=engines["text"],
        precision="fp16" if options.fp16 else onnx_manifest.precision, parity=None,
        files=hash_files(out, [engines["image"].file, engines["text"].file, *extra_files]),
        tensorrt={"version": trt.__version__, "gpu": gpu, "profile": asdict(options.profile),
                  "timing_cache": TIMING_CACHE, "built_from_onnx": dict(onnx_manifest.files),
                  "tf32": uses_tf32(options, onnx_manifest.precision == "fp16"), "fp16_flag": options.fp16},
        created_with={**onnx_manifest.created_with, "tensorrt": trt.__version__})


def _parity(out: Path, manifest: Manifest) -> dict:
    """Engines against eager PyTorch (the `torch` extra); a build step without torch passes parity=False."""
    from export.parity import check_parity, require_parity
    from export.runtime.trt import tensorrt_encoders
    from export.source import eager_model_for

    loaded = eager_model_for(manifest)
    encoders = tensorrt_encoders(out, manifest, "cuda")
    report = check_parity(loaded, encoders, manifest.precision)
    require_parity(report, str(out))
    return report.to_dict()
