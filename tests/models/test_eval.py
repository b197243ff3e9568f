import json

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
