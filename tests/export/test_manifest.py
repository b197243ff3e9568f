"""manifest.json is complete, round-trips, and refuses missing or modified files with a clear message."""

from __future__ import annotations

import json
import sys
from dataclasses import fields

import numpy as np
import pytest

from export.errors import ExportError
from export.manifest import (CLIP_BPE_VOCAB, MANIFEST_FILE, Manifest, load_tokenizer, read_manifest, sha256_file,
                             write_manifest)
from export.runtime import load_encoders
from models.preprocess import PreprocessConfig


def test_manifest_is_complete(bundled_export, bundled):
    root, _ = bundled_export
    data = json.loads((root / MANIFEST_FILE).read_text())
    for f in fields(Manifest):
        assert f.name in data, f.name
        # engines / int8 / sigmoid-loss models / `bench --record` fill these
        if f.name not in ("tensorrt", "quantization", "logit_bias", "batch_knees"):
            assert data[f.name] not in (None, "", {}, []), f.name
    assert data["kind"] == "onnx" and data["precision"] == "fp32" and data["format_version"] == 1
    assert data["model_id"] == bundled.model_id and data["fingerprint"] == bundled.fingerprint
    assert data["embed_dim"] == bundled.embed_dim == 128
    assert data["context_length"] == bundled.context_length == 24
    assert data["logit_scale"] == pytest.approx(bundled.logit_scale)
    assert data["logit_bias"] is None  # CLIP: softmax over the labels
    assert set(data["preprocess"]) == {f.name for f in fields(PreprocessConfig)}
    assert data["opset"] >= 17
    assert set(data["files"]) == {"image.onnx", "text.onnx", "open_clip_config.json", CLIP_BPE_VOCAB}
    assert data["tokenizer"] == {"type": "clip_bpe", "vocab": CLIP_BPE_VOCAB}  # tokenises without open_clip


def test_every_listed_sha256_is_right(bundled_export):
    root, manifest = bundled_export
    for name, digest in manifest.files.items():
        assert sha256_file(root / name) == digest


def test_preprocessing_and_tokenizer_come_back_from_the_manifest_alone(bundled_export, bundled, copy_export,
                                                                         tmp_path):
    root = copy_export(bundled_export[0])  # a copy far from the source checkpoint
    manifest = read_manifest(root)
    assert manifest.preprocess_config == bundled.preprocess
    texts = ["a red circle", "", "日本語 🐱"]
    assert (load_tokenizer(manifest, root)(texts) == bundled.tokenizer(texts)).all()
    assert (load_encoders(root).tokenizer()(texts) == bundled.tokenizer(texts)).all()


def test_the_tokenizer_comes_from_the_exports_own_vocabulary_without_open_clip(bundled_export, bundled, copy_export,
                                                                              monkeypatch):
    from models.tokenizer import ClipTokenizer

    root = copy_export(bundled_export[0])
    monkeypatch.setitem(sys.modules, "models.factory", None)  # importing open_clip's side now fails
    tok = load_tokenizer(read_manifest(root), root)
    assert isinstance(tok, ClipTokenizer) and tok.context_length == 24
    texts = ["a red circle", "", "日本語 🐱", "<b>x</b> &amp; y"]
    assert (tok(texts) == bundled.tokenizer(texts).numpy()).all()


def without_vocabulary(root):
    """An export as made before exports carried their vocabulary: no tokenizer record, no file."""
    manifest = read_manifest(root)
    (root / CLIP_BPE_VOCAB).unlink()
    manifest.files.pop(CLIP_BPE_VOCAB)
    manifest.tokenizer = None
    write_manifest(manifest, root)
    return manifest


def test_an_old_export_without_vocabulary_falls_back_on_open_clip_and_says_so(bundled_export, bundled, copy_export,
                                                                              caplog):
    root = copy_export(bundled_export[0])
    manifest = without_vocabulary(root)
    with caplog.at_level("WARNING", logger="export.manifest"):
        tok = load_tokenizer(read_manifest(root), root)
    assert "no tokenizer vocabulary of its own: open_clip builds its tokenizer" in caplog.text
    assert (np.asarray(tok(["a red circle"])) == bundled.tokenizer(["a red circle"]).numpy()).all()
    assert manifest.tokenizer is None


def test_an_old_export_without_open_clip_is_refused_with_the_remedy(bundled_export, copy_export, monkeypatch):
    root = copy_export(bundled_export[0])
    without_vocabulary(root)
    monkeypatch.setitem(sys.modules, "models.factory", None)
    with pytest.raises(ExportError, match=r"no tokenizer vocabulary.*re-export with `python -m export onnx`.*"
                                          r"clip-serve\[torch\]"):
        load_tokenizer(read_manifest(root), root)


def test_round_trip(bundled_export):
    root, manifest = bundled_export
    assert read_manifest(root) == manifest


def test_the_logit_bias_round_trips_and_an_export_without_one_scores_with_a_softmax(bundled_export):
    data = bundled_export[1].to_dict()
    sigmoid = Manifest.from_dict({**data, "logit_bias": -12.5})
    assert sigmoid.activation.name == "sigmoid" and sigmoid.activation.logit_bias == -12.5
    older = {k: v for k, v in data.items() if k != "logit_bias"}  # written before the field existed
    assert Manifest.from_dict(older).activation.name == "softmax"


@pytest.mark.parametrize("name", ["image.onnx", "text.onnx", "open_clip_config.json"])
def test_modified_file_is_refused_with_its_name(bundled_export, copy_export, name):
    root = copy_export(bundled_export[0])
    with open(root / name, "r+b") as f:  # flip one byte in the middle
        f.seek(f.seek(0, 2) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ExportError, match=rf"{name}.*corrupted.*re-export"):
        load_encoders(root)


@pytest.mark.parametrize("name", ["image.onnx", "text.onnx"])
def test_missing_graph_is_refused_with_its_name(bundled_export, copy_export, name):
    root = copy_export(bundled_export[0])
    (root / name).unlink()
    with pytest.raises(ExportError, match=rf"{name} is listed .* but missing"):
        load_encoders(root)


def test_truncated_graph_with_matching_sha_still_gives_a_clear_error(bundled_export, copy_export):
    """A graph that is damaged but re-hashed (e.g. hand-edited manifest) fails in ONNX Runtime, clearly."""
    root = copy_export(bundled_export[0])
    graph = root / "image.onnx"
    graph.write_bytes(graph.read_bytes()[:1000])
    data = json.loads((root / MANIFEST_FILE).read_text())
    data["files"]["image.onnx"] = sha256_file(graph)
    (root / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(ExportError, match=r"(?s)cannot load .*image\.onnx.*re-export"):
        load_encoders(root)


def test_missing_manifest_says_how_to_make_one(bundled_export, copy_export):
    root = copy_export(bundled_export[0])
    (root / MANIFEST_FILE).unlink()
    with pytest.raises(ExportError, match=r"manifest.json is missing.*python -m export onnx"):
        load_encoders(root)


def test_missing_directory(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        load_encoders(tmp_path / "nope")


def test_manifest_lacking_a_field_is_refused(bundled_export, copy_export):
    root = copy_export(bundled_export[0])
    data = json.loads((root / MANIFEST_FILE).read_text())
    del data["fingerprint"]
    (root / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(ExportError, match="lacks field.*fingerprint"):
        read_manifest(root)


def test_manifest_that_is_not_json_is_refused(bundled_export, copy_export):
    root = copy_export(bundled_export[0])
    (root / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ExportError, match="not valid JSON"):
        read_manifest(root)


def test_unverified_read_skips_hashing(bundled_export, copy_export):
    root = copy_export(bundled_export[0])
    (root / "text.onnx").write_bytes(b"junk")
    assert read_manifest(root, verify=False).kind == "onnx"
    with pytest.raises(ExportError):
        read_manifest(root)


def test_encoders_reject_wrong_shapes(bundled_export):
    enc = load_encoders(bundled_export[0])
    with pytest.raises(ValueError, match=r"pixels must have shape \[B, 3, 64, 64\]"):
        enc.encode_image(np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"tokens must have shape \[B, 24\]"):
        enc.encode_text(np.zeros((2, 77), np.int64))
    assert enc.encode_image(np.zeros((0, 3, 64, 64), np.float32)).shape == (0, 128)
