"""`python -m export ...` end to end on the bundled model."""

from __future__ import annotations

import json

from export import parity
from export.__main__ import main
from export.manifest import MANIFEST_FILE


def test_onnx_command_exports_and_checks_parity(bundled_dir, tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(["onnx", "--model", str(bundled_dir), "--out", str(out), "--parity-shapes", "16"]) == 0
    assert "parity passed" in capsys.readouterr().out
    assert json.loads((out / MANIFEST_FILE).read_text())["parity"]["passed"]


def test_onnx_command_fails_loudly_when_parity_fails(bundled_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(parity.MIN_COSINE, "fp32", 1.5)  # unreachable: every export now "fails"
    out = tmp_path / "exp"
    assert main(["onnx", "--model", str(bundled_dir), "--out", str(out), "--parity-shapes", "8"]) == 1
    err = capsys.readouterr().err
    assert "do not match eager PyTorch" in err and "image min cosine" in err
    assert not (out / MANIFEST_FILE).exists()  # nothing servable is left behind


def test_onnx_command_with_an_unknown_model(tmp_path, capsys):
    assert main(["onnx", "--model", "no-such-model", "--out", str(tmp_path / "x")]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err


def test_verify_prints_table_and_json(bundled_export, capsys):
    assert main(["verify", str(bundled_export[0]), "--parity-shapes", "8"]) == 0
    out = capsys.readouterr().out
    assert "image min cosine" in out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["passed"] and result["providers"] == ["CPUExecutionProvider"]
    assert result["image_min_cosine"] >= 0.99999 and result["zero_shot_agreement"] == 1.0


def test_verify_refuses_a_damaged_export(bundled_export, copy_export, capsys):
    root = copy_export(bundled_export[0])
    (root / "image.onnx").write_bytes(b"\0" * 10)
    assert main(["verify", str(root)]) == 2
    assert "image.onnx is corrupted" in capsys.readouterr().err


def test_bench_writes_a_table_and_json(bundled_export, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", str(bundled_export[0]), "--batch-sizes", "1,4", "--seconds", "0.05", "--rounds", "2",
                 "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| image | 4 |" in table and "onnx / torch" in table
    rows = json.loads(out.read_text())["rows"]
    assert {(r["tower"], r["backend"], r["batch"]) for r in rows} == {
        (t, b, n) for t in ("image", "text") for b in ("torch", "onnx") for n in (1, 4)}
    assert all(r["items_per_s"] > 0 for r in rows)


def test_bench_record_writes_each_towers_knee_for_this_host(bundled_export, copy_export, capsys):
    from export.batch_knee import host_id, recorded_knees
    from export.manifest import read_manifest

    root = copy_export(bundled_export[0])
    assert main(["bench", str(root), "--backends", "onnx", "--batch-sizes", "1,2,4", "--seconds", "0.05",
                 "--record"]) == 0
    assert "recorded in" in capsys.readouterr().out
    manifest = read_manifest(root)  # still a valid export: every hashed file unchanged
    record = manifest.batch_knees["cpu"]
    assert record["host"] == host_id("cpu")
    for tower in ("image", "text"):
        curve = {int(n): r for n, r in record[tower]["items_per_s"].items()}
        assert set(curve) == {1, 2, 4} and record[tower]["max_batch"] in curve
        assert curve[record[tower]["max_batch"]] >= 0.95 * max(curve.values())
    assert recorded_knees(manifest, "cpu") == {t: record[t]["max_batch"] for t in ("image", "text")}
    assert recorded_knees(manifest, "cuda") == {}  # nothing recorded for that device
