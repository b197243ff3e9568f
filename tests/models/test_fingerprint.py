"""README: the fingerprint is "a hash of weights + preprocessing + tokenizer": a change to any of the three, with
the other two the same, gives another fingerprint; the same model loaded twice gives the same one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from open_clip.tokenizer import SimpleTokenizer

from models.factory import load_model
from models.fingerprint import fingerprint_model

PROBES = ["A Red, Circle!!", "a  blue   square", "Café &amp; crème", "twenty-one stars"]


def _variant(bundled_dir: Path, tmp_path: Path, name: str, edit) -> str:
    """A copy of the bundled checkpoint directory with its open_clip_config.json edited by `edit(config)`."""
    out = tmp_path / name
    shutil.copytree(bundled_dir, out)
    config = json.loads((out / "open_clip_config.json").read_text())
    edit(config)
    (out / "open_clip_config.json").write_text(json.dumps(config))
    return str(out)


def test_the_same_model_gives_the_same_fingerprint(bundled, bundled_dir, tmp_path):
    copy = _variant(bundled_dir, tmp_path, "copy", lambda c: None)
    assert load_model(copy).fingerprint == bundled.fingerprint == load_model(str(bundled_dir)).fingerprint


@pytest.mark.parametrize("field,value", [("mean", [0.5, 0.5, 0.5]), ("std", [0.25, 0.25, 0.25]),
                                         ("interpolation", "bilinear"), ("resize_mode", "squash"), ("fill_color", 255)])
def test_preprocessing_changes_the_fingerprint(bundled, bundled_dir, tmp_path, field, value):
    loaded = load_model(_variant(bundled_dir, tmp_path, field,
                                 lambda c: c["preprocess_cfg"].__setitem__(field, value)))
    assert getattr(loaded.preprocess, field) != getattr(bundled.preprocess, field), "the premise: it was read"
    assert loaded.fingerprint != bundled.fingerprint, f"preprocess_cfg.{field} changed, the fingerprint did not"


def test_a_tokenizer_that_cleans_text_otherwise_changes_the_fingerprint(bundled, bundled_dir, tmp_path):
    """open_clip's text_cfg.tokenizer_kwargs: same weights, same vocabulary, other tokens for the same text."""
    loaded = load_model(_variant(bundled_dir, tmp_path, "canonicalize",
                                 lambda c: c["model_cfg"]["text_cfg"].__setitem__("tokenizer_kwargs",
                                                                                  {"clean": "canonicalize"})))
    assert not (loaded.tokenizer(PROBES) == bundled.tokenizer(PROBES)).all(), "the premise: other tokens"
    assert loaded.fingerprint != bundled.fingerprint


def test_the_tokenizer_context_length_changes_the_fingerprint(bundled):
    same = fingerprint_model(bundled.model, bundled.preprocess, SimpleTokenizer(context_length=24))
    assert same == bundled.fingerprint, "the premise: the bundled tokenizer is this one"
    shorter = SimpleTokenizer(context_length=16)
    assert fingerprint_model(bundled.model, bundled.preprocess, shorter) != bundled.fingerprint


@pytest.mark.parametrize("kwargs", [{"clean": "whitespace"}, {"reduction_mask": "simple"},
                                    {"additional_special_tokens": ["<mask>"]}])
def test_every_tokenizer_option_that_changes_tokens_changes_the_fingerprint(bundled, kwargs):
    other = SimpleTokenizer(context_length=24, **kwargs)
    assert fingerprint_model(bundled.model, bundled.preprocess, other) != bundled.fingerprint


def test_shipped_fingerprints_stay_what_they_were(bundled, bundled_dir):
    """Fingerprints are stored in model cards, export manifests and clients' vector stores: a default tokenizer
    and preprocessing must keep the value they always had (models/checkpoints/shapes-rn-s/card.json)."""
    card = json.loads((bundled_dir / "card.json").read_text())
    assert bundled.fingerprint == card["fingerprint"] == "b6ef9d38e876a264"
