import json

import pytest

from models.eval import evaluate, main


def test_eval_reproduces_the_model_card(bundled, bundled_dir):
    card = json.loads((bundled_dir / "card.json").read_text())
    result = evaluate(bundled)
    assert abs(result["heldout_top1"] - card["heldout_top1"]) <= 0.01
    assert abs(result["seen_top1"] - card["seen_top1"]) <= 0.01
    assert result["n_classes"] == card["n_classes"] >= 40
    assert bundled.fingerprint == card["fingerprint"]


def test_eval_cli_prints_one_json_line(bundled_dir, capsys):
    assert main(["--checkpoint", str(bundled_dir), "--n-heldout", "60", "--n-seen", "52"]) == 0
    line = capsys.readouterr().out.strip()
    result = json.loads(line)
    assert {"heldout_top1", "seen_top1", "n_classes", "n_images"} <= result.keys()
    assert result["n_images"] == 112


def test_eval_cli_evaluates_export_directories_beside_the_checkpoint(bundled, bundled_dir, tmp_path, capsys):
    from export.onnx_export import OnnxOptions, export_onnx
    from export.source import source_spec

    fp32, int8 = tmp_path / "fp32", tmp_path / "int8"
    export_onnx(bundled, source_spec(str(bundled_dir)), fp32, OnnxOptions(parity=False))
    export_onnx(bundled, source_spec(str(bundled_dir)), int8, OnnxOptions(precision="int8", parity=False))
    assert main(["--checkpoint", str(bundled_dir), "--export", str(fp32), "--export", str(int8),
                 "--n-heldout", "120", "--n-seen", "104"]) == 0
    eager, onnx_fp32, onnx_int8 = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert (onnx_fp32["precision"], onnx_int8["precision"], onnx_int8["export"]) == ("fp32", "int8", str(int8))
    assert onnx_fp32["fingerprint"] == onnx_int8["fingerprint"] == eager["fingerprint"]
    for key in ("heldout_top1", "seen_top1", "n_images"):  # fp32 graphs are the checkpoint to 1e-12
        assert onnx_fp32[key] == eager[key], key
    assert abs(onnx_int8["heldout_top1"] - eager["heldout_top1"]) <= 0.02  # 120 images: 2 may differ


def test_eval_cli_needs_a_model(capsys):
    with pytest.raises(SystemExit):
        main([])
    assert "--checkpoint, --export, or both" in capsys.readouterr().err
