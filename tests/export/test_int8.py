"""int8 exports: the recipe, the graphs, the precision-aware parity gate (passing, and refusing a broken graph)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import export.onnx_export as onnx_export
from export import parity, quantize
from export.__main__ import main
from export.attention import plain_attention
from export.errors import ExportError
from export.manifest import CLIP_BPE_VOCAB, MANIFEST_FILE, read_manifest
from export.parity import MEAN_COSINE, MIN_AGREEMENT, MIN_COSINE, check_parity
from export.runtime import load_encoders


def _ops(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


def test_int8_export_quantizes_the_matmuls_and_records_the_recipe(bundled_export_int8):
    root, manifest = bundled_export_int8
    assert manifest.precision == "int8" and read_manifest(root).precision == "int8"
    q = manifest.quantization
    assert q["recipe"] == quantize.RECIPES["dynamic"].to_dict()
    assert q["text"]["int8_ops"]["MatMulInteger"] >= 12  # 3 layers x 4 weight MatMuls, plus the projection
    assert q["image"]["int8_ops"]["MatMulInteger"] >= 1  # the attention pool; the ResNet's convolutions stay fp32
    assert q["plain_attention_modules"] == 3 and q["onnxruntime"]
    assert _ops(root / "text.onnx")["MatMulInteger"] == q["text"]["int8_ops"]["MatMulInteger"]
    text = onnx.load(str(root / "text.onnx"))
    assert text.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64  # I/O unchanged
    assert text.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert set(manifest.files) == {"image.onnx", "text.onnx", "open_clip_config.json", CLIP_BPE_VOCAB}
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # the fp32 trace was removed


def test_int8_parity_passes_the_int8_bounds_on_the_bundled_model(bundled_export_int8, bundled):
    root, manifest = bundled_export_int8
    assert manifest.parity["passed"] and manifest.parity["min_cosine_required"] == 0.99
    report = check_parity(bundled, load_encoders(root), "int8", n_shapes=256)
    assert report.passed, report.table()
    assert (report.min_cosine_required, report.mean_cosine_required, report.min_agreement_required) == (
        MIN_COSINE["int8"], MEAN_COSINE["int8"], MIN_AGREEMENT["int8"]) == (0.99, 0.995, 0.98)
    assert min(report.image_min_cosine, report.text_min_cosine) >= 0.99
    assert min(report.image_mean_cosine, report.text_mean_cosine) >= 0.995
    assert report.zero_shot_decided > 200 and report.zero_shot_decided_agreement >= 0.98
    # int8 is not fp32: the gate that fp32 exports must pass would refuse it
    assert not check_parity(bundled, load_encoders(root), "fp32", n_shapes=8).passed


def _corrupt_first_weight_scale(monkeypatch, factor: float) -> None:
    """quantize_tower writes graphs whose first MatMul weight scale is off by `factor` (a quantizer bug)."""
    real = onnx_export.quantize_tower

    def broken(fp32, out, *args, **kwargs):
        summary = real(fp32, out, *args, **kwargs)
        model = onnx.load(str(out))
        scale = next(t for t in model.graph.initializer if t.name.endswith("_scale") and "MatMul" in t.name)
        scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * factor, scale.name))
        onnx.save(model, str(out))
        return summary

    monkeypatch.setattr(onnx_export, "quantize_tower", broken)


def test_export_refuses_an_int8_graph_with_a_corrupted_scale(bundled_dir, tmp_path, capsys, monkeypatch):
    _corrupt_first_weight_scale(monkeypatch, 3.0)
    out = tmp_path / "broken"
    assert main(["onnx", "--model", str(bundled_dir), "--out", str(out), "--precision", "int8",
                 "--parity-shapes", "16"]) == 1
    err = capsys.readouterr().err
    assert "do not match eager PyTorch" in err and "text min cosine" in err and "--int8-recipe" in err
    assert not (out / MANIFEST_FILE).exists()  # nothing servable is left behind


def test_int8_command_prints_the_parity_numbers(bundled_dir, tmp_path, capsys):
    out = tmp_path / "int8"
    assert main(["onnx", "--model", str(bundled_dir), "--out", str(out), "--precision", "int8",
                 "--int8-keep-fp32", "/transformer/resblocks.2/mlp/", "--int8-keep-fp32", "^/visual/attnpool/Gemm",
                 "--parity-shapes", "8"]) == 0
    printed = capsys.readouterr().out
    assert "(int8, opset 17)" in printed and "mean" in printed and "zero-shot agreement" in printed
    q = json.loads((out / MANIFEST_FILE).read_text())["quantization"]
    assert q["recipe"]["keep_fp32"] == ["/transformer/resblocks.2/mlp/", "^/visual/attnpool/Gemm"]
    assert sorted(q["text"]["kept_fp32_nodes"]) == ["/transformer/resblocks.2/mlp/c_fc/MatMul",
                                                    "/transformer/resblocks.2/mlp/c_proj/MatMul"]
    assert q["text"]["int8_ops"]["MatMulInteger"] == 11  # 13 less the two kept in fp32
    assert q["image"]["kept_fp32_nodes"] == ["/visual/attnpool/Gemm"]  # a Gemm: the quantizer renames it first
    assert q["image"]["int8_ops"]["MatMulInteger"] == 3


@pytest.mark.parametrize("argv, message", [
    (["--fp16", "--precision", "int8"], "contradict"),
    (["--int8-recipe", "static"], "need --precision int8"),
    (["--precision", "int8", "--int8-keep-fp32", "no-such-node"], "matches no node"),
    (["--precision", "int8", "--int8-keep-fp32", "("], "not a regular expression"),
])
def test_onnx_command_refuses_contradictory_flags(bundled_dir, tmp_path, capsys, argv, message):
    assert main(["onnx", "--model", str(bundled_dir), "--out", str(tmp_path / "x"), *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, precision", [(["--fp16"], "fp16"), (["--precision", "fp16"], "fp16"),
                                             (["--precision", "int8"], "int8"), ([], "fp32")])
def test_precision_flags_reach_the_export(monkeypatch, bundled_dir, tmp_path, argv, precision):
    seen = {}

    def stub(loaded, spec, out, options):  # records what was asked, exports nothing
        seen["options"] = options
        raise ExportError("stub")

    monkeypatch.setattr(onnx_export, "export_onnx", stub)
    assert main(["onnx", "--model", str(bundled_dir), "--out", str(tmp_path / "x"), *argv]) == 2
    assert seen["options"].precision == precision
    assert onnx_export.OnnxOptions(fp16=True).precision == "fp16"


def test_tensorrt_command_refuses_an_int8_export(bundled_export_int8, tmp_path, capsys):
    assert main(["tensorrt", "--onnx", str(bundled_export_int8[0]), "--out", str(tmp_path / "trt")]) == 2
    assert "int8 export" in capsys.readouterr().err


def test_bench_compares_an_int8_export_with_its_fp32_export(bundled_export, bundled_export_int8, capsys):
    assert main(["bench", str(bundled_export[0]), "--compare", str(bundled_export_int8[0]), "--backends", "onnx",
                 "--batch-sizes", "2", "--seconds", "0.05"]) == 0
    assert "onnx-int8 / onnx" in capsys.readouterr().out


def test_bench_refuses_to_compare_exports_of_different_models(bundled_export, bundled_export_int8, copy_export,
                                                             capsys):
    other = copy_export(bundled_export_int8[0])
    manifest = json.loads((other / MANIFEST_FILE).read_text())
    (other / MANIFEST_FILE).write_text(json.dumps({**manifest, "fingerprint": "0" * 16}))  # as if another model's
    assert main(["bench", str(bundled_export[0]), "--compare", str(other), "--backends", "onnx"]) == 2
    assert "another model" in capsys.readouterr().err


def test_unknown_recipe_is_refused():
    with pytest.raises(ExportError, match="unknown int8 recipe"):
        quantize.recipe("int4")


def test_calibration_data_is_not_the_parity_data(bundled):
    images, tokens = quantize.calibration_images(bundled), quantize.calibration_tokens(bundled)
    inputs = parity.parity_inputs(bundled, n_shapes=16)
    assert images.shape[1:] == tuple(inputs.shapes.shape[1:]) and len(images) == 8 + quantize.CALIBRATION_IMAGES
    assert not any(np.array_equal(images[8], s) for s in inputs.shapes)  # another seed and split
    assert tokens.dtype == np.int64 and tokens.shape[1] == bundled.context_length


def test_plain_attention_matches_multihead_attention_and_is_restored(vitb32):
    loaded, _ = vitb32
    tokens = loaded.tokenizer(["a photo of a cat", "a diagram of a rocket engine"])
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    model = loaded.model
    with torch.no_grad():
        ref_img, ref_txt = model.encode_image(pixels), model.encode_text(tokens)
        with plain_attention(model) as swapped:
            assert swapped == 24  # 12 image + 12 text blocks
            img, txt = model.encode_image(pixels), model.encode_text(tokens)
    assert torch.allclose(img, ref_img, atol=1e-4) and torch.allclose(txt, ref_txt, atol=1e-4)
    assert all(type(m.attn).__name__ == "MultiheadAttention" for m in model.modules() if hasattr(m, "attn"))


def test_parity_bounds_of_int8():
    def report(**kw):
        base = dict(precision="int8", min_cosine_required=0.99, image_min_cosine=0.995, text_min_cosine=0.995,
                    zero_shot_agreement=1.0, zero_shot_decided=100, zero_shot_decided_flips=0, n_photos=4,
                    n_shape_images=100, n_texts=10, eager_zero_shot_top1=1.0, exported_zero_shot_top1=1.0,
                    mean_cosine_required=0.995, image_mean_cosine=0.998, text_mean_cosine=0.998,
                    min_agreement_required=0.98)
        r = parity.ParityReport(**{**base, **kw})
        r.failures = parity._failures(r)
        return r

    assert report().passed
    assert report(zero_shot_decided_flips=2).passed  # 98% of the decided images agree
    assert not report(zero_shot_decided_flips=3).passed
    assert not report(image_mean_cosine=0.994).passed  # every image above 0.99, but on average too far
    assert not report(text_min_cosine=0.989).passed
    assert report(zero_shot_decided=0, zero_shot_decided_flips=0).passed  # random weights decide nothing


def test_static_recipe_is_refused_on_the_resnet_until_its_convolutions_stay_fp32(bundled_dir, tmp_path, capsys):
    """A real recipe, not a corrupted graph: calibrated int8 convolutions cost the bundled ResNet too much."""
    refused, kept = tmp_path / "static", tmp_path / "static-convs-fp32"
    assert main(["onnx", "--model", str(bundled_dir), "--out", str(refused), "--precision", "int8",
                 "--int8-recipe", "static", "--parity-shapes", "64"]) == 1
    assert "image min cosine" in capsys.readouterr().err and not (refused / MANIFEST_FILE).exists()
    assert main(["onnx", "--model", str(bundled_dir), "--out", str(kept), "--precision", "int8",
                 "--int8-recipe", "static", "--int8-keep-fp32", "/Conv$", "--parity-shapes", "64"]) == 0
    q = json.loads((kept / MANIFEST_FILE).read_text())["quantization"]
    assert q["recipe"]["method"] == "static" and q["recipe"]["calibration"] == "minmax"
    assert q["image"]["fp32_compute_ops"]["Conv"] == len(q["image"]["kept_fp32_nodes"]) == 19
    assert q["image"]["int8_ops"]["MatMul (QDQ)"] >= 1 and q["text"]["int8_ops"]["MatMul (QDQ)"] >= 12
