"""Parity against eager PyTorch: fp32 and fp16 bounds, zero-shot agreement, and loud failure."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from export import parity
from export.errors import ParityError
from export.parity import MIN_COSINE, PARITY_TEXTS, check_parity, require_parity
from export.runtime import load_encoders


def test_parity_inputs_are_varied(bundled):
    inputs = parity.parity_inputs(bundled, n_shapes=8)
    assert len(inputs.photos) == 4 and len(inputs.shapes) == 8
    assert "" in PARITY_TEXTS and any(ord(c) > 0x3000 for t in PARITY_TEXTS for c in t)  # CJK / emoji
    assert max(len(t.split()) for t in PARITY_TEXTS) > bundled.context_length  # truncated text
    assert inputs.prompts.shape[0] == inputs.n_labels * 8


def test_decision_margin_tells_near_ties_from_clear_decisions():
    cos = np.array([[0.30, 0.3001, 0.1], [0.9, 0.1, 0.2]])  # [S=2, C=3]
    margin = parity.decision_margin(cos, logit_scale=100.0)
    assert margin[0] < parity.DECIDED_MARGIN < margin[1]
    assert margin[1] > 0.99


def test_bundled_fp32_parity(bundled_export, bundled):
    report = check_parity(bundled, load_encoders(bundled_export[0]), "fp32")
    assert report.passed, report.table()
    assert report.image_min_cosine >= MIN_COSINE["fp32"] and report.text_min_cosine >= MIN_COSINE["fp32"]
    assert report.zero_shot_agreement == 1.0  # every image, not only the decided ones
    assert report.zero_shot_decided > report.n_shape_images // 2
    assert report.eager_zero_shot_top1 > 0.5  # the bundled model is trained: the check is meaningful
    assert report.exported_zero_shot_top1 == report.eager_zero_shot_top1


def test_bundled_fp16_parity_with_the_looser_bound(bundled_export_fp16, bundled):
    root, manifest = bundled_export_fp16
    assert manifest.precision == "fp16" and manifest.parity["passed"]
    report = check_parity(bundled, load_encoders(root), "fp16")
    assert report.passed, report.table()
    assert report.min_cosine_required == MIN_COSINE["fp16"] == 0.999
    assert min(report.image_min_cosine, report.text_min_cosine) >= 0.999
    assert report.zero_shot_agreement == 1.0


def test_fp16_graphs_compute_in_half(bundled_export_fp16):
    import onnx

    model = onnx.load(str(bundled_export_fp16[0] / "image.onnx"))
    big = [t for t in model.graph.initializer if len(t.dims) >= 2]
    assert big and all(t.data_type == onnx.TensorProto.FLOAT16 for t in big)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # I/O stays float32


def test_parity_fails_loudly_for_another_model(bundled_export, bundled):
    other = copy.copy(bundled)
    other.model = copy.deepcopy(bundled.model)
    torch.manual_seed(0)
    with torch.no_grad():  # a different image tower: every weight scaled by noise
        for p in other.model.visual.parameters():
            p.mul_(1 + 0.5 * torch.randn_like(p))
    report = check_parity(other, load_encoders(bundled_export[0]), "fp32", n_shapes=8)
    assert not report.passed
    assert any("image min cosine" in f for f in report.failures)
    with pytest.raises(ParityError, match="do not match eager PyTorch"):
        require_parity(report, "somewhere")
