"""ONNX export of the bundled model and of a random-weight ViT-B-32 state dict: graphs, dynamic batch, parity."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from export.parity import MIN_COSINE, row_cosine
from export.runtime import load_encoders
from tests.export.lean_server import serve_and_probe

BATCHES = {"bundled": (1, 7, 64), "vitb32": (1, 5, 17)}  # ViT-B-32 at 64 took 30 s of a 2-core machine's CPU


def _graph_io(path):
    model = onnx.load(str(path), load_external_data=False)
    (inp,), (out,) = model.graph.input, model.graph.output

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    return model, inp, out, dims(inp), dims(out)


@pytest.mark.parametrize("which", ["bundled_export", "vitb32_export"])
def test_export_writes_named_graphs_with_dynamic_batch(which, request):
    root, manifest = request.getfixturevalue(which)
    assert {"image.onnx", "text.onnx", "manifest.json", "open_clip_config.json"} <= {p.name for p in root.iterdir()}
    h, w = manifest.image_size
    model, inp, out, in_dims, out_dims = _graph_io(root / "image.onnx")
    assert (inp.name, out.name) == ("pixels", "embedding")
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert in_dims == ["batch", 3, h, w] and out_dims == ["batch", manifest.embed_dim]
    model, inp, out, in_dims, out_dims = _graph_io(root / "text.onnx")
    assert (inp.name, out.name) == ("tokens", "embedding")
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert in_dims == ["batch", manifest.context_length] and out_dims == ["batch", manifest.embed_dim]


def test_weights_are_inside_the_graphs(bundled_export):
    root, _ = bundled_export
    for name in ("image.onnx", "text.onnx"):
        model = onnx.load(str(root / name), load_external_data=False)
        assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert not [p for p in root.iterdir() if p.suffix == ".data"]


def test_normalisation_is_inside_the_graph(bundled_export):
    root, _ = bundled_export
    ops = {n.op_type for n in onnx.load(str(root / "image.onnx")).graph.node}
    assert "ReduceL2" in ops or "LpNormalization" in ops


@pytest.mark.parametrize("which,model", [("bundled_export", "bundled"),
                                         pytest.param("vitb32_export", "vitb32", marks=pytest.mark.slow)])
def test_batch_sizes_through_the_dynamic_axis(which, model, request):
    root, manifest = request.getfixturevalue(which)
    loaded = request.getfixturevalue(model)
    loaded = loaded[0] if isinstance(loaded, tuple) else loaded
    enc = load_encoders(root, backend="onnx", device="cpu")
    torch.manual_seed(0)
    batches = BATCHES[model]
    pixels = torch.rand(max(batches), 3, *manifest.image_size) * 4 - 2  # [B, 3, H, W], roughly normalised
    words = ["cat", "a red circle", "", "über naïve 日本", "x " * 60, "dog", "rocket"]
    tokens = loaded.tokenizer([words[i % len(words)] + f" {i}" for i in range(max(batches))])  # [B, L]
    with torch.no_grad():
        ref_img = loaded.model.encode_image(pixels, normalize=True).numpy()
        ref_txt = loaded.model.encode_text(tokens, normalize=True).numpy()
    for b in batches:
        img, txt = enc.encode_image(pixels[:b].numpy()), enc.encode_text(tokens[:b].numpy())
        assert img.shape == txt.shape == (b, manifest.embed_dim)
        assert img.dtype == txt.dtype == np.float32
        assert row_cosine(img, ref_img[:b]).min() >= MIN_COSINE["fp32"]
        assert row_cosine(txt, ref_txt[:b]).min() >= MIN_COSINE["fp32"]


@pytest.mark.parametrize("which", ["bundled_export", "vitb32_export"])
def test_parity_was_checked_and_recorded(which, request):
    _, manifest = request.getfixturevalue(which)
    p = manifest.parity
    assert p["passed"] and p["failures"] == []
    assert p["image_min_cosine"] >= 0.99999 and p["text_min_cosine"] >= 0.99999
    assert p["zero_shot_decided_flips"] == 0
    assert p["n_photos"] == 4


@pytest.mark.slow
def test_vit_b_32_onnx_server_imports_no_torch(vitb32_export, tmp_path):
    """The lean server (tests/export/lean_server.py) on a ViT-B-32 export: in this file, so that under
    pytest-xdist the one worker that runs it makes the session's ViT-B-32 export once."""
    heavy, answers = serve_and_probe(vitb32_export[0], tmp_path)
    assert heavy == [], f"the onnx server loaded {heavy}"
    assert len(answers["text"]["embeddings"][0]) == vitb32_export[1].embed_dim
