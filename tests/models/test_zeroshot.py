"""models.zeroshot: the one label-score arithmetic (server and evaluation), equal to torch's softmax and sigmoid, numpy
only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models.zeroshot import Activation, label_scores

ROOT = Path(__file__).resolve().parents[2]


def _unit_rows(rng: np.random.Generator, n: int, d: int = 16) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_importing_it_loads_no_torch_or_open_clip():
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, models.zeroshot; "
                               "print(sorted(m for m in ('torch', 'torchvision', 'open_clip') if m in sys.modules))"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]", loaded


@pytest.mark.parametrize("bias", [None, -10.0, 3.0])
def test_probabilities_are_torchs_softmax_or_sigmoid(bias):
    rng = np.random.default_rng(0)
    images, labels = _unit_rows(rng, 5), _unit_rows(rng, 7)
    head = Activation(117.0, bias)
    got = label_scores(images, labels, head)
    logits = torch.from_numpy(images) @ torch.from_numpy(labels).T * 117.0
    expected = logits.softmax(-1) if bias is None else torch.sigmoid(logits + bias)
    assert got.dtype == np.float32 and got.shape == (5, 7)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-7)
    assert head.name == ("softmax" if bias is None else "sigmoid")


def test_sigmoid_of_far_negative_logits_is_zero_without_overflow():
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        p = Activation(100.0, -50.0).probabilities(np.array([[-1.0, 0.0, 1.0]], dtype=np.float32))
    np.testing.assert_allclose(p, [[0.0, 1.9287e-22, 1.0]], rtol=1e-4)


def test_cosine_scores_are_the_cosines_and_other_kinds_are_refused():
    rng = np.random.default_rng(1)
    images, labels = _unit_rows(rng, 3), _unit_rows(rng, 4)
    np.testing.assert_array_equal(label_scores(images, labels, Activation(100.0, -10.0), "cosine"), images @ labels.T)
    with pytest.raises(ValueError, match="scores must be one of"):
        label_scores(images, labels, Activation(100.0), "logits")  # type: ignore[arg-type]


@pytest.mark.parametrize("head", [Activation(120.0, -12.5), Activation(100.0)])
def test_the_head_round_trips_through_json(head):
    sent = json.loads(json.dumps(head.to_dict()))
    assert sent["activation"] == head.name and Activation.from_dict(sent) == head
