"""int8 tower graphs: ONNX Runtime quantization of a traced fp32 graph, by a named recipe.

    dynamic               (default) weights int8 with one scale per output channel; activations quantized on the
                          fly (per call, one scale per tensor) before every MatMul/Gemm that has a weight. Everything
                          else stays fp32: the patch or stem convolutions, LayerNorm, GELU, softmax and the attention
                          products (Q·Kᵀ, A·V).
    dynamic-per-tensor    the same with one weight scale per tensor
    static                QDQ: weights per channel, activation scales fixed by calibration on the photos this
                          package ships (export/parity_images, and their mirror images), generated shapes images
                          and prompts; every MatMul (the attention products too) and Gemm, and convolutions
    static-per-tensor     the same with one weight scale per tensor

Which recipe wins, and why the default is `dynamic`, is measured in docs/export.md ("int8 on CPU"). Every recipe can keep
named nodes in fp32 (`keep_fp32`: regular expressions over ONNX node names such as `/visual/conv1/` or
`/visual/MatMul$`), for a model whose parity gate fails on a few sensitive layers.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import onnx
from PIL import Image, ImageOps

from export.errors import ExportError
from export.parity import PHOTO_DIR
from models.data.shapes import ShapesConfig, all_pairs, class_label, generate
from models.factory import LoadedModel
from models.preprocess import eval_pixels
from models.prompts import label_prompts

log = logging.getLogger(__name__)

CALIBRATION_SEED = 4321  # not models.eval's seed: the parity gate's shapes images are not calibration images
CALIBRATION_IMAGES = 96  # shapes images (training split: one or two objects, auxiliary colours)
CALIBRATION_BATCH = 16
CALIBRATION_TEMPLATES = ("a {}.", "a photo of the {}.", "itap of a {}.", "a good photo of the {}.")  # not EVAL's


@dataclass(frozen=True)
class Int8Recipe:
    """How a tower graph is quantized; written to the manifest as `quantization`."""

    name: str
    method: str  # "dynamic" (activation scales computed per call) | "static" (QDQ, calibrated scales)
    per_channel: bool  # one weight scale per output channel (True) or per tensor
    op_types: tuple[str, ...]  # ONNX op types whose weights (and inputs) become int8
    keep_fp32: tuple[str, ...] = ()  # regular expressions over node names: matching nodes stay fp32
    weight_type: str = "int8"  # signed weights, unsigned activations: the u8s8 kernels VNNI runs
    activation_type: str = "uint8"
    calibration: str | None = None  # static only: "minmax" over the calibration set below

    def to_dict(self) -> dict:
        return asdict(self)


RECIPES: dict[str, Int8Recipe] = {r.name: r for r in (
    Int8Recipe("dynamic", "dynamic", per_channel=True, op_types=("MatMul", "Gemm")),
    Int8Recipe("dynamic-per-tensor", "dynamic", per_channel=False, op_types=("MatMul", "Gemm")),
    Int8Recipe("static", "static", per_channel=True, op_types=("MatMul", "Gemm", "Conv"), calibration="minmax"),
    Int8Recipe("static-per-tensor", "static", per_channel=False, op_types=("MatMul", "Gemm", "Conv"),
               calibration="minmax"),
)}
DEFAULT_RECIPE = "dynamic"


def recipe(name: str, keep_fp32: Sequence[str] = ()) -> Int8Recipe:
    """A named recipe, with extra node-name patterns kept in fp32."""
    if name not in RECIPES:
        raise ExportError(f"unknown int8 recipe {name!r}; choose one of {', '.join(RECIPES)}.")
    for pattern in keep_fp32:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ExportError(f"--int8-keep-fp32 {pattern!r} is not a regular expression: {e}") from e
    base = RECIPES[name]
    return replace(base, keep_fp32=base.keep_fp32 + tuple(keep_fp32)) if keep_fp32 else base


# --- calibration data (static recipes) -----------------------------------------------------------------------
def calibration_images(loaded: LoadedModel, n_shapes: int = CALIBRATION_IMAGES) -> np.ndarray:
    """float32 [P * 2 + n, 3, H, W]: the shipped photos and their mirror images, and generated shapes images."""
    photos = [Image.open(p).convert("RGB") for p in sorted(PHOTO_DIR.glob("*.jpg"))]
    photos += [ImageOps.mirror(p) for p in photos]
    cfg = ShapesConfig(image_size=loaded.preprocess.height)  # type: ignore[call-arg]
    shapes = [s.image for s in generate(CALIBRATION_SEED, n_shapes, "train", cfg)]
    return np.stack([eval_pixels(im, loaded.preprocess) for im in photos + shapes])


def calibration_tokens(loaded: LoadedModel, n_captions: int = CALIBRATION_IMAGES) -> np.ndarray:
    """int64 [T, L]: every colour x shape label under CALIBRATION_TEMPLATES, and generated training captions."""
    labels = [class_label(c, s) for c, s in all_pairs()]
    prompts = label_prompts(labels, CALIBRATION_TEMPLATES)
    cfg = ShapesConfig(image_size=loaded.preprocess.height)  # type: ignore[call-arg]
    captions = [s.caption for s in generate(CALIBRATION_SEED, n_captions, "train", cfg)]
    return np.asarray(loaded.tokenizer(prompts + captions), dtype=np.int64)


class _Batches:
    """onnxruntime.quantization.CalibrationDataReader over one array, in batches."""

    def __init__(self, input_name: str, data: np.ndarray) -> None:
        self._it: Iterator[dict] = iter({input_name: data[i:i + CALIBRATION_BATCH]}
                                        for i in range(0, len(data), CALIBRATION_BATCH))

    def get_next(self) -> dict | None:
        return next(self._it, None)


# --- quantization --------------------------------------------------------------------------------------------
def quantize_tower(fp32_graph: Path, out: Path, rec: Int8Recipe, input_name: str,
                   calibration: np.ndarray | None = None, external_data: bool = False) -> dict:
    """Write the int8 graph of `fp32_graph` to `out`; returns what was quantized (for the manifest)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".quantize-") as tmp:
        prepared = Path(tmp) / fp32_graph.name
        # ORT's basic graph optimisations and ONNX shape inference first, as ORT's quantization guide asks; its
        # symbolic shape inference cannot follow the traced reshapes (assertion in _infer_Reshape), so it is skipped
        quant_pre_process(str(fp32_graph), str(prepared), skip_symbolic_shape=True,
                          save_as_external_data=external_data)
        exclude = _matching_nodes(prepared, rec.keep_fp32, rec.op_types)
        # the quantizer first rewrites each Gemm X as a MatMul named "X_MatMul" (+ Add), then applies exclusions
        names = exclude + [f"{name}_MatMul" for name in exclude]
        common = dict(op_types_to_quantize=list(rec.op_types), per_channel=rec.per_channel,
                      weight_type=QuantType.QInt8, nodes_to_exclude=names, use_external_data_format=external_data)
        if rec.method == "dynamic":
            quantize_dynamic(str(prepared), str(out), **common)
        else:
            if calibration is None:
                raise ExportError(f"int8 recipe {rec.name!r} needs calibration data")
            # QDQ quantizes every MatMul, Q·Kᵀ and A·V included (ORT's MatMulConstBOnly only applies to the
            # QOperator format), so the softmax output is int8 too; keep_fp32 'attn/MatMul_[12]$' keeps them fp32
            quantize_static(str(prepared), str(out), _Batches(input_name, calibration), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, calibrate_method=CalibrationMethod.MinMax, **common)
    return summarize(out, exclude)


def _matching_nodes(graph: Path, patterns: Sequence[str], op_types: Sequence[str]) -> list[str]:
    """Names of the nodes the recipe would quantize that a pattern matches."""
    if not patterns:
        return []
    model = onnx.load(str(graph), load_external_data=False)
    return [n.name for n in model.graph.node
            if n.op_type in op_types and any(re.search(p, n.name) for p in patterns)]


def check_patterns_matched(patterns: Sequence[str], kept: Sequence[str]) -> None:
    """Every keep_fp32 pattern matched a node of some tower (a typo would otherwise keep nothing, silently)."""
    unmatched = [p for p in patterns if not any(re.search(p, name) for name in kept)]
    if unmatched:
        raise ExportError(f"--int8-keep-fp32 {unmatched} matches no node the recipe quantizes in either graph; "
                          f"node names look like "
                          f"'/visual/transformer/resblocks.0/mlp/c_fc/MatMul' (image) or "
                          f"'/transformer/resblocks.0/attn/out_proj/MatMul' (text).")


COMPUTE_OPS = ("MatMul", "Gemm", "Conv")


def summarize(graph: Path, kept: Sequence[str] = ()) -> dict:
    """From the graph itself: its int8 ops, and the MatMul/Gemm/Conv nodes left in fp32.

    In a QDQ (static) graph a MatMul fed by DequantizeLinear runs in int8 once ORT fuses the pair; it is counted as
    "MatMul (QDQ)". Dynamic graphs name their int8 ops (MatMulInteger, DynamicQuantizeLinear)."""
    model = onnx.load(str(graph), load_external_data=False)
    made_by = {out: n.op_type for n in model.graph.node for out in n.output}
    int8: Counter = Counter()
    fp32: Counter = Counter()
    for n in model.graph.node:
        if n.op_type in COMPUTE_OPS:
            qdq = all(made_by.get(i) == "DequantizeLinear" for i in n.input[:2])  # data and weight both int8
            (int8 if qdq else fp32)[f"{n.op_type} (QDQ)" if qdq else n.op_type] += 1
        elif "Integer" in n.op_type or n.op_type.startswith(("QLinear", "DynamicQuantize")):
            int8[n.op_type] += 1
    return {"int8_ops": dict(sorted(int8.items())), "fp32_compute_ops": dict(sorted(fp32.items())),
            "kept_fp32_nodes": list(kept)}
