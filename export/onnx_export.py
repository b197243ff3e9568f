"""Export a model's two towers to ONNX, write the manifest, and check parity before declaring success.

Uses torch.onnx's TorchScript-based exporter (dynamo=False): it traces open_clip's ViT and argmax text pooling
with a dynamic batch axis in seconds. fp16 exports trace a half-precision copy of the model, with casts at
the graph edges so callers still pass float32 pixels / int64 tokens and get float32 embeddings back. int8 exports
trace fp32 graphs (attention as plain MatMuls, export/attention.py) into a temporary directory and quantize them
with ONNX Runtime (export/quantize.py); their I/O is float32 / int64 too.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import onnx
import torch
from tqdm import tqdm

from export.attention import plain_attention
from export.errors import ExportError
from export.manifest import (CLIP_BPE_VOCAB, MANIFEST_FILE, PRECISIONS, TOKENIZER_CONFIG, GraphSpec, Manifest,
                             SourceSpec, hash_files, write_manifest)
from export.quantize import (DEFAULT_RECIPE, calibration_images, calibration_tokens, check_patterns_matched,
                             quantize_tower, recipe)
from export.runtime.deps import require_onnxruntime
from export.towers import ImageTower, TextTower
from models.eval import EVAL_TEMPLATES
from models.factory import LoadedModel, model_config
from models.tokenizer import default_bpe_path, exact_equivalent

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17  # first opset with LayerNormalization; ONNX Runtime and TensorRT 10 both take it
TRACE_BATCH = 2  # trace with B=2 so no size-1 broadcast gets baked into the graph
IMAGE_FILE, TEXT_FILE = "image.onnx", "text.onnx"


@dataclass(frozen=True)
class OnnxOptions:
    """How to export."""

    precision: str = "fp32"  # arithmetic inside the graphs: fp32, fp16 or int8 (I/O stays float32 / int64)
    fp16: bool = False  # the older spelling of precision="fp16"
    opset: int = DEFAULT_OPSET
    parity: bool = True  # check against eager PyTorch and refuse to write manifest.json on failure
    parity_shapes: int = 64  # shapes evaluation images in the parity check
    parity_templates: tuple[str, ...] = EVAL_TEMPLATES  # zero-shot prompts per label in the parity check
    int8_recipe: str = DEFAULT_RECIPE  # export.quantize.RECIPES
    int8_keep_fp32: tuple[str, ...] = ()  # node-name patterns kept fp32 on top of the recipe's own

    def __post_init__(self) -> None:
        if self.fp16 and self.precision not in ("fp32", "fp16"):
            raise ExportError(f"fp16=True contradicts precision={self.precision!r}")
        if self.fp16:
            object.__setattr__(self, "precision", "fp16")
        if self.precision not in PRECISIONS:
            raise ExportError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")


def export_onnx(loaded: LoadedModel, source: SourceSpec, out_dir: str | Path,
                options: OnnxOptions = OnnxOptions()) -> Manifest:
    """Write image.onnx, text.onnx, open_clip_config.json and (after parity passes) manifest.json."""
    out = _prepare_dir(Path(out_dir))
    precision = options.precision
    fp16 = precision == "fp16"
    graph_model = _graph_model(loaded.model, fp16)
    h, w = loaded.preprocess.size
    pixels = torch.zeros(TRACE_BATCH, 3, h, w)  # [B, 3, H, W]
    tokens = loaded.tokenizer(["a photo of a cat", "a diagram"])  # [B, L] int64
    compute_dtype = torch.float16 if fp16 else torch.float32
    steps = [(IMAGE_FILE, ImageTower(graph_model, compute_dtype), pixels, "pixels"),
             (TEXT_FILE, TextTower(graph_model), tokens, "tokens")]
    quantization = None
    if precision == "int8":
        files, quantization = _export_int8(loaded, steps, out, options)
    else:
        files = []
        for file, tower, example, input_name in tqdm(steps, desc=f"export onnx ({precision})", unit="tower"):
            files += [file, *export_tower(tower, example, out / file, input_name, loaded.embed_dim, options.opset)]
    tokenizer_source = _write_tokenizer_config(source, loaded, out)
    if tokenizer_source == ".":
        files.append(TOKENIZER_CONFIG)
    tokenizer = write_tokenizer_vocab(loaded, out)
    files += [tokenizer["vocab"]] if tokenizer else []
    manifest = build_manifest(loaded, source, out, files, tokenizer_source, precision, options.opset)
    manifest.tokenizer = tokenizer
    manifest.quantization = quantization
    if quantization:
        manifest.created_with["onnxruntime"] = quantization["onnxruntime"]
    if options.parity:
        manifest.parity = _parity(loaded, out, manifest, options)
    write_manifest(manifest, out)
    log.info("wrote %s", out / MANIFEST_FILE)
    return manifest


def _export_int8(loaded: LoadedModel, steps: list, out: Path, options: OnnxOptions) -> tuple[list[str], dict]:
    """Trace each tower in fp32 into a temporary directory, quantize it into `out`; returns (files, recipe record)."""
    onnxruntime = require_onnxruntime()  # its quantizer writes the graphs
    rec = recipe(options.int8_recipe, options.int8_keep_fp32)
    calibrate = {"pixels": calibration_images, "tokens": calibration_tokens} if rec.method == "static" else {}
    files, towers = [], {}
    with tempfile.TemporaryDirectory(dir=out, prefix=".fp32-") as tmp, plain_attention(loaded.model) as swapped:
        for file, tower, example, input_name in tqdm(steps, desc=f"export onnx (int8, {rec.name})", unit="tower"):
            fp32 = Path(tmp) / file
            external = export_tower(tower, example, fp32, input_name, loaded.embed_dim, options.opset)
            data = calibrate[input_name](loaded) if input_name in calibrate else None
            towers[file.removesuffix(".onnx")] = quantize_tower(fp32, out / file, rec, input_name, data,
                                                                external_data=bool(external))
            files += [file, *_external_files(out / file)]
    check_patterns_matched(rec.keep_fp32, [n for t in towers.values() for n in t["kept_fp32_nodes"]])
    log.info("int8 (%s): %d attention modules traced as plain MatMuls; %s", rec.name, swapped, towers)
    return files, {"recipe": rec.to_dict(), **towers, "plain_attention_modules": swapped,
                   "onnxruntime": onnxruntime.__version__}


def _external_files(path: Path) -> list[str]:
    """External data files a graph refers to (graphs over protobuf's 2 GB limit)."""
    return _external_locations(onnx.load(str(path), load_external_data=False))


def _external_locations(model: onnx.ModelProto) -> list[str]:
    return sorted({entry.value for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
                   for entry in t.external_data if entry.key == "location"})


def _prepare_dir(out: Path) -> Path:
    """Create the directory; drop a previous manifest first so a failed re-export cannot look finished."""
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_FILE).unlink(missing_ok=True)
    return out


def _graph_model(model: torch.nn.Module, fp16: bool) -> torch.nn.Module:
    """The module to trace: the model itself (fp32) or a half-precision copy (fp16; the original is untouched)."""
    if not fp16:
        return model
    return copy.deepcopy(model).to(torch.float16).eval()


def export_tower(tower: torch.nn.Module, example: torch.Tensor, path: Path, input_name: str, embed_dim: int,
                 opset: int) -> list[str]:
    """Trace one tower to ONNX with a dynamic batch axis, output [B, D]; returns external weight files.

    Weights stay inside the .onnx file unless the tower passes protobuf's 2 GB limit, where the exporter
    writes them beside it (those files are returned so the manifest hashes them too).
    """
    tower.eval()
    with _no_mha_fastpath(), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings and the dynamo=False deprecation notice
        torch.onnx.export(tower, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=[input_name], output_names=["embedding"],
                          dynamic_axes={input_name: {0: "batch"}, "embedding": {0: "batch"}},
                          do_constant_folding=True)
    external = _fix_output_shape(path, embed_dim)
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:
        raise ExportError(f"exported {path.name} is not a valid ONNX graph ({e}); try another --opset.") from e
    return external


@contextmanager
def _no_mha_fastpath() -> Iterator[None]:
    """nn.MultiheadAttention's inference fast path (a fused op with no ONNX symbolic) is off while tracing."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def _fix_output_shape(path: Path, embed_dim: int) -> list[str]:
    """The tracer leaves D symbolic ("Divembedding_dim_1"): make it static. Returns external data files."""
    model = onnx.load(str(path), load_external_data=False)
    dim = model.graph.output[0].type.tensor_type.shape.dim[1]
    dim.Clear()
    dim.dim_value = embed_dim
    onnx.save(model, str(path))
    return _external_locations(model)


def _write_tokenizer_config(source: SourceSpec, loaded: LoadedModel, out: Path) -> str:
    """Copy open_clip_config.json in, so `tokenizer_for(<export dir>)` rebuilds the tokenizer offline.

    Returns the manifest's tokenizer_source: "." (this directory), or the hf-hub: id, whose config and
    tokenizer open_clip fetches from the hub itself.
    """
    if source.model.startswith("hf-hub:"):
        return source.model
    config = {"model_cfg": model_config(source.model), "preprocess_cfg": loaded.preprocess.to_open_clip()}
    (out / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return "."


def write_tokenizer_vocab(loaded: LoadedModel, out: Path) -> dict | None:
    """Copy open_clip's CLIP vocabulary in when the model's tokenizer is open_clip's CLIP BPE (models.tokenizer gives
    its ids exactly), so serving tokenises without open_clip; returns the manifest's `tokenizer` record, or None for
    other tokenizers (Hugging Face ones, SigLIP's), which keep needing open_clip (the `torch` extra)."""
    exact = exact_equivalent(loaded.tokenizer)
    if exact is None:
        log.warning("the tokenizer of %s (%s) is not open_clip's CLIP BPE: serving this export needs open_clip (the "
                    "`torch` extra)", loaded.model_id, type(loaded.tokenizer).__name__)
        return None
    shutil.copyfile(default_bpe_path(), out / CLIP_BPE_VOCAB)
    return {"type": "clip_bpe", "vocab": CLIP_BPE_VOCAB}


def graph_specs(loaded: LoadedModel) -> tuple[GraphSpec, GraphSpec]:
    """The image and text GraphSpecs of an ONNX export of this model."""
    h, w = loaded.preprocess.size
    image = GraphSpec(IMAGE_FILE, "pixels", "embedding", "float32", [-1, 3, h, w])
    text = GraphSpec(TEXT_FILE, "tokens", "embedding", "int64", [-1, loaded.context_length])
    return image, text


def build_manifest(loaded: LoadedModel, source: SourceSpec, out: Path, files: list[str], tokenizer_source: str,
                   precision: str, opset: int) -> Manifest:
    """The manifest of a fresh ONNX export in `out`, with the sha256 of each of `files`."""
    image, text = graph_specs(loaded)
    return Manifest(
        kind="onnx", model_id=loaded.model_id, fingerprint=loaded.fingerprint, source=source,
        embed_dim=loaded.embed_dim, logit_scale=loaded.logit_scale, preprocess=loaded.preprocess.to_dict(),
        tokenizer_source=tokenizer_source, context_length=loaded.context_length, opset=opset, precision=precision,
        image=image, text=text, files=hash_files(out, files), created_with=tool_versions(),
        logit_bias=loaded.logit_bias)


def tool_versions() -> dict[str, str]:
    import open_clip

    return {"torch": torch.__version__, "open_clip": open_clip.__version__, "onnx": onnx.__version__}


def _parity(loaded: LoadedModel, out: Path, manifest: Manifest, options: OnnxOptions) -> dict:
    """Run the parity check on ONNX Runtime CPU; raises ParityError (and no manifest is written) on failure."""
    from export.parity import check_parity, require_parity
    from export.runtime import encoders_from_manifest

    encoders = encoders_from_manifest(out, manifest, device="cpu")
    report = check_parity(loaded, encoders, manifest.precision, options.parity_shapes, options.parity_templates)
    require_parity(report, str(out))
    return report.to_dict()
