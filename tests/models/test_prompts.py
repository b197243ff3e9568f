"""models.prompts: one way to fill a template and one prompt-ensembling arithmetic, equal to open_clip's, without
torch (the server, the parity check and the evaluation share it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

from models.prompts import TEMPLATE_SETS, fill, label_prompts, prototypes

ROOT = Path(__file__).resolve().parents[2]


def test_importing_it_loads_no_torch_or_open_clip():
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, models.prompts; "
                               "print(sorted(m for m in ('torch', 'torchvision', 'open_clip') if m in sys.modules))"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]", loaded


def test_the_template_sets_are_open_clips():
    assert TEMPLATE_SETS["openai_imagenet"] == tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)
    assert TEMPLATE_SETS["simple"] == tuple(t("{}") for t in SIMPLE_IMAGENET_TEMPLATES)
    assert TEMPLATE_SETS["default"] == ("a photo of a {}.",)


@pytest.mark.parametrize("template, label, expected", [
    ("a photo of a {}.", "cat", "a photo of a cat."),
    ("{} and again {}", "dog", "dog and again dog"),
    ("a {0} {x} {{}} photo of {}", "cat", "a {0} {x} {cat} photo of cat"),  # format() would raise or substitute
    ("a photo of a {}.", "{} {x} {0}", "a photo of a {} {x} {0}."),  # a label's braces stay as they are
])
def test_fill_replaces_every_placeholder_and_nothing_else(template, label, expected):
    assert fill(template, label) == expected


def test_prompts_are_label_major():
    assert label_prompts(["a", "b"], ["{}!", "x {}"]) == ["a!", "x a", "b!", "x b"]


def test_prototypes_are_open_clips_arithmetic():
    """open_clip's build_zero_shot_classifier: normalise each prompt embedding, mean over templates, renormalise."""
    rng = np.random.default_rng(0)
    n_labels, n_templates, dim = 5, 7, 16
    emb = rng.normal(size=(n_labels * n_templates, dim)).astype(np.float32) * rng.uniform(0.1, 10, (35, 1))
    theirs = F.normalize(torch.from_numpy(emb).reshape(n_labels, n_templates, dim), dim=-1).mean(dim=1)
    theirs = (theirs / theirs.norm(dim=1, keepdim=True)).numpy()
    ours = prototypes(emb, n_labels)
    assert ours.dtype == np.float32 and ours.shape == (n_labels, dim)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)


def test_prototypes_weigh_templates_equally_whatever_their_norms():
    """Each template embedding is normalised before the mean: a long one does not outvote the others."""
    emb = np.array([[100.0, 0.0], [0.0, 1.0]], dtype=np.float32)  # one label, two templates
    np.testing.assert_allclose(prototypes(emb, 1), [[2 ** -0.5, 2 ** -0.5]], atol=1e-6)


def test_prototypes_refuse_a_shape_that_is_not_labels_x_templates():
    with pytest.raises(ValueError, match="3 labels"):
        prototypes(np.zeros((4, 8), dtype=np.float32), 3)
